"""Balance a training set with attribute-edited synthetic images (`fair augment SPEC`).

VLBC (D'Inca et al., "Improving Fairness using Vision-Language Driven Image Augmentation",
WACV 2024) as a pipeline of replaceable stages, each a plugin with its own ``Params``:

1. a **generator** (:class:`Generator`): ``sample(n, seed) -> (images, codes, noise)`` and
   ``decode(codes, noise) -> images`` (DiffAE: ``codes`` is z_sem, ``noise`` is x_T);
2. a **labeller** (:class:`Labeller`): the class and the protected attribute of each image
   (fair classifiers loaded with ``from_pretrained``);
3. an **editor** (:class:`Editor`): moves the codes so that the protected attribute becomes a
   given value (ContraCLIP's latent paths), decoded with the image's own noise;
4. the **balancing rule** over the real training set's cell counts ``n[c, g]`` (one protected
   attribute with two values): ``"-"`` adds ``n_c = |n[c, 0] - n[c, 1]|`` images of class ``c``
   to its minority group, each a synthetic image of ``(c, majority)`` edited to the minority;
   ``"+"`` (the paper's bias-increasing study) adds ``n_c = 2 max_g n[c, g]`` images edited from
   the minority to the majority group;
5. the **output**: ``<output_dir>/images/<batch>_<row>.png`` (one name per image), a
   ``labels.csv`` that the ``image_folder`` dataset reads (``dataset.json`` holds its spec, to
   put beside the real data in a ``concat`` dataset), and ``manifest.json`` (seeds, counts,
   finished batches).

Batch ``b`` is drawn with the seed ``seed * 1_000_003 + b`` and the cells fill in batch order,
so the dataset depends only on the spec. Every file is written atomically; after each batch the
manifest records it, so a killed run continues at the first unfinished batch and never rewrites
a finished image (an image of the unfinished batch already on disk is identical and kept).

Defects of the original code fixed here: its augmentation script named every batch's files
after the first batch's (files overwritten, labels duplicated); the editor's steps there are drawn
unseeded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from .atomic import atomic_path, write_text
from .data import NoParams
from .errors import FairError
from .spec import MAX_SEED, DataSpec, Name, validate_params

MANIFEST = "manifest.json"
LABELS = "labels.csv"
DATASET = "dataset.json"
IMAGES = "images"
BATCH_SEED_STRIDE = 1_000_003
MAX_MANIFEST_BYTES = 256 * 2**20  # a manifest lists every image (~80 bytes each)


class Stage:
    """A stage plugin: built from its validated ``Params`` and the device it runs on."""

    Params: ClassVar[type[BaseModel]] = NoParams
    description: ClassVar[str] = ""

    def __init__(self, params: BaseModel, device: torch.device):
        self.params, self.device = params, device


class Generator(Stage, ABC):
    """An image generator with an editable code: ``sample`` draws images with their codes and
    noise, ``decode`` renders (possibly edited) codes with a given noise. Images are float
    ``(N, 3, H, W)`` tensors in [0, 1]; ``sample`` with the same seed gives the same images."""

    @abstractmethod
    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(images, codes, noise)`` of ``n`` new images."""

    @abstractmethod
    def decode(self, codes: Tensor, noise: Tensor) -> Tensor:
        """Images of ``codes`` rendered with ``noise``."""

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(codes, noise)`` of real images (not every generator can invert)."""
        raise FairError(f"generator {type(self).__name__} cannot encode images")

    @classmethod
    def convert_weights(cls, checkpoint: Path, output_dir: Path) -> None:
        """Convert an original checkpoint to this generator's safetensors folder (once)."""
        raise FairError(f"generator {cls.__name__} has no weight converter")


class Labeller(Stage, ABC):
    """Gives each image the value codes of some attributes (the class and the protected one)."""

    @property
    @abstractmethod
    def values(self) -> dict[str, tuple[str, ...]]:
        """The attributes it labels and the names of their values (codes index these)."""

    @abstractmethod
    def label(self, images: Tensor) -> dict[str, Tensor]:
        """Integer codes ``(N,)`` per attribute."""


class Editor(Stage, ABC):
    """Moves generator codes so that an attribute of the decoded images becomes ``value``."""

    @abstractmethod
    def edit(self, codes: Tensor, attribute: str, value: str, generator: torch.Generator) -> Tensor:
        """Edited codes; any randomness (e.g. the number of steps) comes from ``generator``."""


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    params: dict[str, Any] = Field(default_factory=dict)


class AugmentSpec(BaseModel):
    """What `fair augment` reads (JSON or YAML)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    data: DataSpec = Field(description="the real training data to balance: its target and ONE protected attribute")
    generator: StageSpec
    labeller: StageSpec
    editor: StageSpec
    mode: Literal["-", "+"] = Field("-", description='"-" adds edited images to each class\'s minority group; "+" '
                                    "edits minority into majority images (the paper's bias-increasing study)")
    batch_size: int = Field(16, ge=1, le=4096, description="images drawn from the generator per batch")
    max_batches: int = Field(1000, ge=1, description="give up (with what was added kept) after this many batches")
    verify: bool = Field(True, description="keep an edited image only when the labeller gives it the wanted group "
                         "and its class (the original keeps every edit)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: Annotated[str, Field(max_length=4096)] = "runs/augment"


def spec_hash(spec: AugmentSpec) -> str:
    """What the images depend on (not where they go, the device, or the batch budget)."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json", exclude={"output_dir", "device", "max_batches"}),
                                     sort_keys=True).encode()).hexdigest()[:16]


def balance_plan(counts: Tensor, mode: str) -> list[tuple[int, int, int, int]]:
    """``(class, source group, target group, n_c)`` for each class of ``counts[c, g]`` (2 groups).

    ``"-"``: from the majority to the minority group, ``n_c = |n[c, 0] - n[c, 1]|``;
    ``"+"``: from the minority to the majority group, ``n_c = 2 max_g n[c, g]``."""
    plan = []
    for c, row in enumerate(counts.tolist()):
        major = 0 if row[0] >= row[1] else 1
        if mode == "-":
            plan.append((c, major, 1 - major, abs(row[0] - row[1])))
        else:
            plan.append((c, 1 - major, major, 2 * max(row)))
    return plan


def _png_bytes(image: Tensor) -> bytes:
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Augmentation:
    """One `fair augment` run: the stages built from the spec, the plan from the real data."""

    def __init__(self, spec: AugmentSpec):
        from .plugins import get_registry

        registry = get_registry()
        self.spec = spec
        device = _device(spec.device)
        chosen = {}  # names and params checked first, then built cheapest first (files before models)
        for kind, field in (("generators", "generator"), ("labellers", "labeller"), ("editors", "editor")):
            stage: StageSpec = getattr(spec, field)
            cls = registry.get(kind, stage.name, f"{field}.name").obj
            chosen[field] = cls, validate_params(cls.Params, stage.params, f"{field}.params")
        stages = {field: chosen[field][0](chosen[field][1], device) for field in ("editor", "labeller", "generator")}
        self.generator: Generator = stages["generator"]
        self.labeller: Labeller = stages["labeller"]
        self.editor: Editor = stages["editor"]

        data = spec.data
        builder_cls = registry.get("datasets", data.name, "data.name").obj
        builder = builder_cls(validate_params(builder_cls.Params, data.params, "data.params"), data.name)
        real = builder.load(data.train_split, data.target, data.sensitive)
        info = real.info
        if len(info.sensitive) != 1 or len(info.group_names) != 2:
            raise FairError(f"data.sensitive: balancing needs one protected attribute with two values; "
                            f"{', '.join(info.sensitive)} has {len(info.group_names)}")
        self.target, self.attribute = info.target, info.sensitive[0]
        self.class_names, self.group_names = info.class_names, info.group_names
        self.preprocessing = info.preprocessing
        for attribute, names in ((self.target, self.class_names), (self.attribute, self.group_names)):
            labelled = self.labeller.values.get(attribute)
            if labelled is None:
                raise FairError(f"labeller: it does not label {attribute!r} (it labels "
                                f"{', '.join(self.labeller.values) or 'nothing'})")
            if tuple(labelled) != tuple(names):
                raise FairError(f"labeller: its values of {attribute!r} ({', '.join(labelled)}) are not the data's "
                                f"({', '.join(names)})")
        self.counts = real.cell_counts()
        self.plan = balance_plan(self.counts, spec.mode)

    def run(self, output_dir: Path, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Generate, label, edit, check and write until every class has its ``n_c`` images
        (resuming from ``output_dir``'s manifest); returns the manifest."""
        spec = self.spec
        images_dir = output_dir / IMAGES
        images_dir.mkdir(parents=True, exist_ok=True)
        manifest = self._load_manifest(output_dir)
        rows: list[dict[str, Any]] = manifest["rows"]
        added = [sum(1 for r in rows if r["class"] == c) for c in range(len(self.class_names))]
        if progress is not None and rows:  # what a killed run had already written
            progress(len(rows))
        needed = {c: n for c, _, _, n in self.plan}
        batch = manifest["batches"]
        while any(added[c] < needed[c] for c in needed) and batch < spec.max_batches:
            seed = spec.seed * BATCH_SEED_STRIDE + batch
            images, codes, noise = self.generator.sample(spec.batch_size, seed)
            labels = self.labeller.label(images)
            classes, groups = labels[self.target].cpu(), labels[self.attribute].cpu()
            picked: list[tuple[int, int, int]] = []  # (row, class, target group)
            taken = list(added)
            for row in range(len(classes)):
                c = int(classes[row])
                _, source, target, n = self.plan[c]
                if int(groups[row]) == source and taken[c] < n:
                    picked.append((row, c, target))
                    taken[c] += 1
            kept = self._edit_and_check(picked, codes, noise, torch.Generator().manual_seed(seed))
            for row, c, target, image in kept:
                name = f"{IMAGES}/{batch:06d}_{row:04d}.png"
                path = output_dir / name
                if not path.exists():  # an unfinished batch's image is already final (same seed, same bytes)
                    _write_bytes(path, _png_bytes(image))
                rows.append({"file": name, "class": c, "group": target, "batch": batch, "row": row})
                added[c] += 1
                if progress is not None:
                    progress(1)
            manifest["rejected"] += len(picked) - len(kept)
            batch += 1
            manifest["batches"] = batch
            self._write_outputs(output_dir, manifest)
        manifest["added"] = {self.class_names[c]: added[c] for c in needed}
        manifest["complete"] = all(added[c] >= needed[c] for c in needed)
        self._write_outputs(output_dir, manifest)
        if not manifest["complete"]:
            short = ", ".join(f"{self.class_names[c]} {added[c]}/{needed[c]}" for c in needed if added[c] < needed[c])
            raise FairError(f"max_batches: after {batch} batches of {spec.batch_size} the generator gave too few "
                            f"images of the cells to edit ({short}); raise max_batches (what was added is kept, a "
                            f"rerun continues)")
        return manifest

    def _edit_and_check(self, picked, codes: Tensor, noise: Tensor, generator: torch.Generator):
        """Edit the picked rows' codes to their target group (per target value), decode with
        their own noise, and (``verify``) keep those the labeller gives the target group and class."""
        out = []
        for target in sorted({t for _, _, t in picked}):
            chosen = [(row, c) for row, c, t in picked if t == target]
            index = torch.tensor([row for row, _ in chosen])
            edited = self.editor.edit(codes[index], self.attribute, self.group_names[target], generator)
            images = self.generator.decode(edited, noise[index]).cpu()
            if self.spec.verify:
                labels = self.labeller.label(images)
                ok = ((labels[self.attribute].cpu() == target)
                      & (labels[self.target].cpu() == torch.tensor([c for _, c in chosen]))).tolist()
            else:
                ok = [True] * len(chosen)
            out += [(row, c, target, image) for (row, c), image, good in zip(chosen, images, ok, strict=True) if good]
        return sorted(out, key=lambda item: item[0])

    def _load_manifest(self, output_dir: Path) -> dict[str, Any]:
        from .untrusted import read_bounded

        path = output_dir / MANIFEST
        fresh = {"spec_hash": spec_hash(self.spec), "spec": self.spec.model_dump(mode="json"), "batches": 0,
                 "rejected": 0, "rows": [], "batch_seed": f"seed * {BATCH_SEED_STRIDE} + batch",
                 "real_counts": {self.class_names[c]: dict(zip(self.group_names, row, strict=True))
                                 for c, row in enumerate(self.counts.tolist())},
                 "plan": [{"class": self.class_names[c], "from": self.group_names[s], "to": self.group_names[t], "n": n}
                          for c, s, t, n in self.plan]}
        if not path.exists():
            return fresh
        try:
            manifest = json.loads(read_bounded(path, MAX_MANIFEST_BYTES, "fair_core.augment.MAX_MANIFEST_BYTES",
                                               "augmentation manifest"))
        except (ValueError, OSError) as exc:
            raise FairError(f"{path}: not a readable manifest ({exc}); use a new output_dir") from None
        if manifest.get("spec_hash") != fresh["spec_hash"]:
            raise FairError(f"output_dir: {output_dir} holds an augmentation of another spec; use a new output_dir "
                            f"or --overwrite")
        return manifest

    def _write_outputs(self, output_dir: Path, manifest: dict[str, Any]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", self.target, self.attribute])
        for row in manifest["rows"]:
            writer.writerow([row["file"], row["class"], row["group"]])
        write_text(output_dir / LABELS, buffer.getvalue())
        dataset = {"name": "image_folder", "params": {
            "root": str(output_dir.resolve()), "split": "train", "attributes": [self.target, self.attribute],
            "values": {self.target: list(self.class_names), self.attribute: list(self.group_names)},
            "image_size": self.preprocessing.image_size, "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std)}}  # the real data's: a concat of the two needs them equal
        write_text(output_dir / DATASET, json.dumps(dataset, indent=2))
        write_text(output_dir / MANIFEST, json.dumps(manifest, indent=2))


def augment(spec: AugmentSpec, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run the pipeline of ``spec`` into its ``output_dir`` (a rerun continues it); the manifest."""
    import shutil

    output_dir = Path(spec.output_dir)
    if overwrite and output_dir.exists() and not (output_dir / MANIFEST).is_file():  # not ours: never deleted
        raise FairError(f"output_dir: {output_dir} holds no {MANIFEST}; --overwrite only replaces an augmentation")
    augmentation = Augmentation(spec)  # the stages and the data checked before anything is deleted
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    total = sum(n for *_, n in augmentation.plan)
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="augment", unit="img", **({} if show_progress else {"disable": True})) as bar:
        return augmentation.run(output_dir, progress=bar.update)


def load_augment_spec(path: str | Path, overrides: list[str] | None = None) -> AugmentSpec:
    """An :class:`AugmentSpec` from a JSON or YAML file with ``--set field=value`` overrides."""
    from .spec import apply_overrides, read_spec_file

    return validate_params(AugmentSpec, apply_overrides(read_spec_file(path), overrides or []), "")


def steps_in(range_: tuple[int, int], generator: torch.Generator) -> int:
    """An integer drawn uniformly from ``[lo, hi]`` with ``generator``."""
    lo, hi = range_
    return lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))


__all__ = ["AugmentSpec", "Augmentation", "Editor", "Generator", "Labeller", "StageSpec", "augment", "balance_plan",
           "load_augment_spec", "steps_in"]
