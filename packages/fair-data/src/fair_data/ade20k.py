"""ADE20K (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017), the 150-class
SceneParsing benchmark, in its official layout::

    root/ADEChallengeData2016/images/{training,validation}/ADE_train_00000001.jpg ...
    root/ADEChallengeData2016/annotations/{training,validation}/ADE_train_00000001.png
    root/ADEChallengeData2016/sceneCategories.txt   # optional: "ADE_train_00000001 airport_terminal"
    # or root/ADEChallengeData2016.zip, as distributed (it holds the ADEChallengeData2016/ folder)

Splits: ``train`` (training, 20,210 images) and ``validation`` (2,000 images). The test images
have no public annotations; papers report on the validation set, so ``test`` is another name for
``validation`` (the default ``eval.split``), as mmsegmentation's test loader is its val loader.

Labels as mmsegmentation's ``ADE20KDataset`` (``reduce_zero_label=True``): annotation value
``v`` in 1..150 is class ``v - 1`` of :data:`CLASSES` (mmseg's order), 0 ("other") is the
ignore index 255. Images and annotations are decoded lazily at full resolution. With
``sceneCategories.txt``, the image-level attribute ``scene`` can be a protected attribute
(``scenes`` keeps a few and calls the rest ``other``); by default a run has no protected
attribute: ADE20K's fairness problem here is across classes (mAcc against aAcc).

The defaults reproduce mmseg's ``configs/_base_/datasets/ade20k.py`` (512 x 512):

* training: ``RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)``,
  ``RandomCrop(512, cat_max_ratio=0.75)``, ``RandomFlip(0.5)``, ``PhotoMetricDistortion``, then
  the data preprocessor's ImageNet normalisation and padding to 512 (image 0 after
  normalisation, mask 255);
* evaluation: ``Resize(scale=(2048, 512), keep_ratio=True)`` of the image only; the mask keeps
  its size, so metrics are computed at the annotation's resolution (the task resizes the logits).

Random draws use torch's global generator, which the runner seeds per epoch and worker.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .images import (
    IMAGENET,
    STORE_HELP,
    ImageStoreKind,
    ZipReader,
    decode_text,
    one_line,
    open_image,
    quote,
    read_bytes,
    read_member,
)

FOLDER = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "validation": "validation", "test": "validation"}
SCENE_FILE = "sceneCategories.txt"
IGNORE_INDEX = 255
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food",
    "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # mmseg's ADE20KDataset.METAINFO["classes"] ("bed " without its trailing space)

# reduce_zero_label, as a lookup table: value v -> v - 1; 0 (and 255) -> the ignore index
REDUCE_ZERO_LABEL = np.array([IGNORE_INDEX, *range(254), IGNORE_INDEX], dtype=np.uint8)

# mmseg's PhotoMetricDistortion defaults, on the 0-255 scale (hue: OpenCV's 0-180 circle)
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


class ADE20KParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description=f"folder holding {FOLDER}/ (images/, annotations/) or {FOLDER}.zip")
    image_store: ImageStoreKind = Field("auto", description=STORE_HELP)
    max_images: int | None = Field(None, ge=1, description="only the first N images of a split (sorted by name), for quick runs")
    scenes: list[str] | None = Field(None, description=f"values of the scene attribute ({SCENE_FILE}): these scenes, "
                                                       "every other one as 'other' (default: every scene)")
    scale: tuple[int, int] = Field((2048, 512), description="keep-ratio resize target (long side, short side): "
                                                            "training's base scale and the evaluation image size")
    ratio_range: tuple[float, float] = Field((0.5, 2.0), description="training: scale multiplied by r ~ U(ratio_range)")
    crop_size: int = Field(512, ge=8, description="training: square random crop, padded (mask: 255) when smaller; the model's image size")
    cat_max_ratio: float = Field(0.75, gt=0, le=1, description="training crop: up to 10 redraws until no class covers this share "
                                                               "of the crop's labelled pixels (1: off)")
    flip_prob: float = Field(0.5, ge=0, le=1, description="training: probability of a horizontal flip")
    photometric: bool = Field(True, description="training: mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)")

    @field_validator("scale")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError("both sides must be at least 1")
        return value

    @field_validator("ratio_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("expected 0 < low <= high")
        return value


# ---------------------------------------------------------------- files: the folder or the zip
class FolderSource:
    """Files of the ADEChallengeData2016 folder, by their names relative to it."""

    def __init__(self, folder: Path):
        self.folder = folder

    def where(self, name: str) -> str:
        return str(self.folder / name)

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def names(self, directory: str, suffix: str) -> list[str]:
        """The ``suffix`` files directly in ``directory``."""
        path = self.folder / directory
        if not path.is_dir():
            raise FairError(f"data.params.root: folder not found: {path}")
        return sorted(p.name for p in path.iterdir() if p.name.endswith(suffix))

    def read(self, name: str) -> bytes:
        """The bytes of the file ``name`` (at most :data:`~fair_data.images.MAX_FILE_BYTES`)."""
        return read_bytes(self.folder / name, "file")


class ZipSource(ZipReader):
    """Files of the ADEChallengeData2016 folder inside its zip, from disk or (``data``) memory.

    Each process opens its own handle; an open archive is never pickled nor shared after a fork."""

    def __init__(self, path: Path, in_memory: bool):
        self.members = frozenset(self._read_archive(path, in_memory))

    def where(self, name: str) -> str:
        return f"{self.path}:{FOLDER}/{name}"

    def exists(self, name: str) -> bool:
        return f"{FOLDER}/{name}" in self.members

    def names(self, directory: str, suffix: str) -> list[str]:
        start = f"{FOLDER}/{directory}/"
        names = [m[len(start):] for m in self.members if m.startswith(start)]
        if not names:
            raise FairError(f"data.params.root: folder not found: {self.where(directory)}/")
        return sorted(n for n in names if "/" not in n and n.endswith(suffix))

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``, checked first (:func:`~fair_data.images.read_member`: size,
        compression ratio, encryption); a corrupt member is one line naming ``archive:member``."""
        return read_member(self._open(), f"{FOLDER}/{name}", self.path)


Source = FolderSource | ZipSource


def open_source(root: Path, kind: ImageStoreKind) -> Source:
    """The ADEChallengeData2016 folder in ``root`` or its zip, as ``kind`` asks."""
    folder, zip_path = root / FOLDER, root / f"{FOLDER}.zip"
    use_folder = kind == "folder" or (kind == "auto" and folder.is_dir())
    if not (folder.is_dir() if use_folder else zip_path.is_file()):
        expected = {"folder": f"{folder}/", "zip": str(zip_path), "zip_in_memory": str(zip_path)}.get(kind, f"{folder}/ or {zip_path}")
        raise FairError(f"data.params.root: expected the official ADE20K layout at {expected} "
                        f"({FOLDER}/images/training/*.jpg, {FOLDER}/annotations/training/*.png)")
    return FolderSource(folder) if use_folder else ZipSource(zip_path, in_memory=kind == "zip_in_memory")


def decode_image(raw: bytes, where: str) -> Tensor:
    """A JPEG as a float ``(3, H, W)`` tensor in [0, 1], at full resolution (at most
    :data:`~fair_data.images.MAX_IMAGE_PIXELS`, checked on the header before decoding)."""
    with open_image(io.BytesIO(raw), where) as image:
        try:
            pixels = np.array(image.convert("RGB"))
        except Exception as exc:  # PIL's decoders raise OSError, ValueError, ... on corrupt data
            raise FairError(f"corrupt image {where}: {one_line(exc)}") from None
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div_(255)


def decode_mask(raw: bytes, where: str) -> Tensor:
    """An annotation PNG's raw values (mode L or P) as a uint8 ``(H, W)`` mask of class indices (at
    most :data:`~fair_data.images.MAX_IMAGE_PIXELS`, checked on the header before decoding)."""
    with open_image(io.BytesIO(raw), where) as image:
        if image.mode not in ("L", "P"):
            raise FairError(f"annotation {where}: mode {image.mode}, expected an 8-bit single-channel PNG (L or P)")
        try:
            values = np.array(image)
        except Exception as exc:  # PIL's decoders raise OSError, ValueError, ... on corrupt data
            raise FairError(f"corrupt annotation {where}: {one_line(exc)}") from None
    return torch.from_numpy(REDUCE_ZERO_LABEL[values])


def parse_scenes(text: str, where: str) -> dict[str, str]:
    """sceneCategories.txt's "ADE_train_00000001 airport_terminal" lines as {image: scene}."""
    scenes = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if len(parts) == 2:
            scenes[parts[0]] = parts[1]
        elif parts:
            raise FairError(f"{where}: line {number}: expected 'image scene', got {quote(line.strip())}")
    return scenes


class LazyFiles:
    """``files[i]``: the file ``names[i]`` of ``source`` decoded by ``decode`` when asked (in a worker)."""

    def __init__(self, source: Source, names: Sequence[str], decode: Callable[[bytes, str], Tensor]):
        self.source, self.names, self.decode = source, list(names), decode

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Tensor:
        name = self.names[i]
        return self.decode(self.source.read(name), self.source.where(name))


# ---------------------------------------------------------------- transforms (mmseg semantics)
def rescale_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= max(scale), short <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, no antialiasing (OpenCV's INTER_LINEAR, as mmcv)."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest neighbour (OpenCV's INTER_NEAREST, as mmcv)."""
    if tuple(mask.shape) == size:
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].to(mask.dtype)


def balanced(mask: Tensor, cat_max_ratio: float) -> bool:
    """mmseg's crop test: two labelled classes or more, none covering ``cat_max_ratio`` of them."""
    labels = mask[mask != IGNORE_INDEX]
    counts = torch.bincount(labels.reshape(-1).long())
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio


def crop_origin(mask: Tensor, crop: int, cat_max_ratio: float) -> tuple[int, int]:
    """mmseg's RandomCrop box: a uniform origin, redrawn up to 10 times until :func:`balanced`."""
    height, width = mask.shape

    def draw() -> tuple[int, int]:
        return (int(torch.randint(max(height - crop, 0) + 1, ())), int(torch.randint(max(width - crop, 0) + 1, ())))

    top, left = draw()
    if cat_max_ratio < 1:
        for _ in range(10):
            if balanced(mask[top:top + crop, left:left + crop], cat_max_ratio):
                break
            top, left = draw()
    return top, left


def coin() -> bool:
    return bool(torch.rand(()) < 0.5)


def uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def adjust_saturation(image: Tensor, factor: float) -> Tensor:
    """HSV saturation times ``factor`` (clipped at 1), hue and value kept, computed in RGB."""
    value = image.amax(0, keepdim=True)
    spread = value - image.amin(0, keepdim=True)
    factor_map = (value / spread.clamp_min(1e-12)).clamp(max=factor)
    return value - factor_map * (value - image)


def adjust_hue(image: Tensor, shift: float) -> Tensor:
    """HSV hue rotated by ``shift`` turns, saturation and value kept."""
    r, g, b = image.unbind(0)
    value, low = image.amax(0), image.amin(0)
    spread = value - low
    d = spread.clamp_min(1e-12)
    hue = torch.where(value == r, ((g - b) / d) % 6, torch.where(value == g, (b - r) / d + 2, (r - g) / d + 4))
    k = (torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1) + hue + 6 * shift) % 6
    return value - spread * torch.minimum(k, 4 - k).clamp(0, 1)


def photometric_distortion(image: Tensor) -> Tensor:
    """mmseg's PhotoMetricDistortion on a [0, 1] image: brightness, contrast (before or after the
    rest, at random), saturation, hue, each with probability 1/2."""

    def contrast(x: Tensor) -> Tensor:
        return (x * uniform(*CONTRAST_RANGE)).clamp(0, 1) if coin() else x

    if coin():
        image = (image + uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA) / 255).clamp(0, 1)
    contrast_first = coin()
    if contrast_first:
        image = contrast(image)
    if coin():
        image = adjust_saturation(image, uniform(*SATURATION_RANGE))
    if coin():
        image = adjust_hue(image, int(torch.randint(-HUE_DELTA, HUE_DELTA, ())) / 180)
    return image if contrast_first else contrast(image)


@dataclass(frozen=True)
class TrainTransform:
    """mmseg's ADE20K training pipeline on ``(image, mask)``: random keep-ratio resize, crop with
    ``cat_max_ratio``, flip, photometric distortion, then padding to the crop (bottom and right;
    the image with ``pad_value``, the ImageNet mean, which normalises to mmseg's 0)."""

    scale: tuple[int, int]
    ratio_range: tuple[float, float]
    crop_size: int
    cat_max_ratio: float
    flip_prob: float
    photometric: bool
    pad_value: tuple[float, float, float]

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        ratio = uniform(*self.ratio_range)
        size = rescale_size(*mask.shape, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        image, mask = resize_image(image, size), resize_mask(mask, size)
        crop = self.crop_size
        top, left = crop_origin(mask, crop, self.cat_max_ratio)
        image, mask = image[:, top:top + crop, left:left + crop], mask[top:top + crop, left:left + crop]
        if torch.rand(()) < self.flip_prob:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.photometric:
            image = photometric_distortion(image)
        return self.pad(image, mask)

    def pad(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        height, width = mask.shape
        if (height, width) == (self.crop_size, self.crop_size):
            return image.contiguous(), mask.contiguous()
        padded = torch.tensor(self.pad_value, dtype=image.dtype).view(3, 1, 1).repeat(1, self.crop_size, self.crop_size)
        padded[:, :height, :width] = image
        padded_mask = torch.full((self.crop_size, self.crop_size), IGNORE_INDEX, dtype=mask.dtype)
        padded_mask[:height, :width] = mask
        return padded, padded_mask


@dataclass(frozen=True)
class EvalTransform:
    """mmseg's ADE20K test pipeline: the image resized keep-ratio to ``scale``, the mask unchanged."""

    scale: tuple[int, int]

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return resize_image(image, rescale_size(*image.shape[-2:], self.scale)), mask


# ---------------------------------------------------------------- the plugin
class ADE20K(DatasetBuilder):
    """ADE20K SceneParsing (150 classes) in the official layout, with mmseg's 512 x 512 pipeline."""

    Params = ADE20KParams
    splits: ClassVar[tuple[str, ...]] = ("train", "validation", "test")
    default_target = None
    default_sensitive = ()
    tasks: ClassVar[tuple[str, ...]] = ("segmentation",)
    description = "ADE20K SceneParsing, 150 classes (official folder or zip; test = validation), mmseg's pipeline (segmentation)"

    @cached_property
    def source(self) -> Source:
        """The folder or zip, opened once for every split (a zip in memory is read once)."""
        return open_source(self.params.root, self.params.image_store)

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.crop_size, *IMAGENET)

    def pair_transform(self, train: bool) -> TrainTransform | EvalTransform:
        p = self.params
        if not train:
            return EvalTransform(p.scale)
        return TrainTransform(p.scale, p.ratio_range, p.crop_size, p.cat_max_ratio, p.flip_prob, p.photometric, IMAGENET[0])

    def read_split(self, split: str) -> SplitData:
        source, folder = self.source, SPLIT_FOLDERS[split]
        stems = [name[: -len(".jpg")] for name in source.names(f"images/{folder}", ".jpg")][: self.params.max_images]
        if not stems:
            raise FairError(f"data.params.root: no .jpg images in {source.where(f'images/{folder}')}")
        annotations = set(source.names(f"annotations/{folder}", ".png"))
        missing = [stem for stem in stems if f"{stem}.png" not in annotations]
        if missing:
            raise FairError(f"annotation not found: {source.where(f'annotations/{folder}/{missing[0]}.png')} "
                            f"({len(missing)} of {len(stems)} images have none)")
        attributes, values = self.read_scenes(stems)
        return SplitData(
            images=LazyFiles(source, [f"images/{folder}/{stem}.jpg" for stem in stems], decode_image),
            attributes=attributes,
            values=values,
            masks=LazyFiles(source, [f"annotations/{folder}/{stem}.png" for stem in stems], decode_mask),
            mask_classes=CLASSES,
            ignore_index=IGNORE_INDEX,
        )

    def read_scenes(self, stems: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, tuple[str, ...]]]:
        """The ``scene`` attribute from sceneCategories.txt (none without the file)."""
        source, chosen = self.source, self.params.scenes
        if not source.exists(SCENE_FILE):
            if chosen is not None:
                raise FairError(f"data.params.scenes: no scene file: {source.where(SCENE_FILE)}")
            return {}, {}
        where = source.where(SCENE_FILE)
        scene_of = parse_scenes(decode_text(source.read(SCENE_FILE), where), where)
        unknown = [s for s in chosen or () if s not in scene_of.values()]
        if unknown:
            raise FairError(f"data.params.scenes: unknown scene {unknown[0]!r} in {source.where(SCENE_FILE)}")
        names = (*chosen, "other") if chosen is not None else tuple(sorted(set(scene_of.values())))
        missing = [stem for stem in stems if stem not in scene_of]
        if missing:
            raise FairError(f"{source.where(SCENE_FILE)}: no scene for {missing[0]} ({len(missing)} images)")
        code = {name: i for i, name in enumerate(names)}
        codes = [code.get(scene_of[stem], len(names) - 1) for stem in stems]
        return {"scene": torch.tensor(codes, dtype=torch.long)}, {"scene": names}
