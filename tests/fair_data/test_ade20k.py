"""ADE20K loader on a tiny dataset in the official layout (folder and zip), and mmseg's transforms."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_jpeg
from fair_core import FairError
from fair_core.runner import run
from fair_core.spec import parse_spec
from fair_core.tasks import SegmentationTask
from fair_data.ade20k import ADE20K, CLASSES, IGNORE_INDEX, EvalTransform, TrainTransform, balanced
from fair_data.images import IMAGENET

SIZES = {"training": [(40, 30), (24, 50), (33, 20)], "validation": [(40, 30), (24, 50)]}  # (width, height)
SCENES = {"ADE_train_00000001": "bedroom", "ADE_train_00000002": "street", "ADE_train_00000003": "bedroom",
          "ADE_val_00000001": "kitchen", "ADE_val_00000002": "street"}


def stems(folder):
    prefix = "train" if folder == "training" else "val"
    return [f"ADE_{prefix}_{i:08d}" for i in range(1, len(SIZES[folder]) + 1)]


@pytest.fixture
def ade_root(tmp_path):
    """3 training and 2 validation images of different sizes; annotation values 0..150 (0 and 150 in each)."""
    root = tmp_path / "ade"
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for folder, sizes in SIZES.items():
        (base / "images" / folder).mkdir(parents=True)
        (base / "annotations" / folder).mkdir(parents=True)
        for seed, (stem, (width, height)) in enumerate(zip(stems(folder), sizes, strict=True)):
            write_jpeg(base / "images" / folder / f"{stem}.jpg", seed, (width, height))
            values = rng.integers(0, 151, (height, width), dtype=np.uint8)
            values[0, :2] = (0, 150)
            Image.fromarray(values).save(base / "annotations" / folder / f"{stem}.png")
    return root


def raw_values(root, folder, stem):
    return np.array(Image.open(root / "ADEChallengeData2016/annotations" / folder / f"{stem}.png"))


def zip_of(root, destination):
    """The official zip: every file under an ADEChallengeData2016/ prefix."""
    destination.mkdir()
    with zipfile.ZipFile(destination / "ADEChallengeData2016.zip", "w") as archive:
        for path in sorted((root / "ADEChallengeData2016").rglob("*")):
            archive.write(path, path.relative_to(root).as_posix())
    return destination


def builder(root, **params):
    return ADE20K(ADE20K.Params(root=root, **params), "ade20k")


def test_class_names_are_mmsegs_150():
    assert len(CLASSES) == 150 == len(set(CLASSES))
    assert CLASSES[:8] == ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed") and CLASSES[-1] == "flag"
    assert all(name == name.strip() for name in CLASSES)


def test_masks_reduce_zero_label_at_original_size(ade_root):
    data = builder(ade_root).read_split("train")
    assert len(data.images) == len(data.masks) == 3 and data.mask_classes == CLASSES and data.ignore_index == 255
    for i, (stem, (width, height)) in enumerate(zip(stems("training"), SIZES["training"], strict=True)):
        values, mask, image = raw_values(ade_root, "training", stem), data.masks[i], data.images[i]
        assert mask.shape == (height, width) and image.shape == (3, height, width) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        expected = torch.from_numpy(values).long() - 1
        expected[expected < 0] = 255
        assert torch.equal(mask.long(), expected)
        assert mask[0, 0] == 255 and mask[0, 1] == 149
    validation = builder(ade_root).read_split("validation")
    assert [tuple(m.shape) for m in validation.masks] == [(30, 40), (50, 24)]
    assert torch.equal(builder(ade_root).read_split("test").masks[1], validation.masks[1])
    assert len(builder(ade_root, max_images=2).read_split("train").masks) == 2


@pytest.mark.parametrize("store", ["zip", "zip_in_memory", "auto"])
def test_zip_gives_the_same_data_as_the_folder(ade_root, tmp_path, store):
    zipped = zip_of(ade_root, tmp_path / "zipped")
    folder, archive = builder(ade_root).read_split("train"), builder(zipped, image_store=store).read_split("train")
    assert "ADEChallengeData2016.zip" in archive.images.source.where("x")
    for i in range(3):
        assert torch.equal(folder.images[i], archive.images[i]) and torch.equal(folder.masks[i], archive.masks[i])


def test_scene_attribute(ade_root):
    assert builder(ade_root).read_split("train").attributes == {}
    with pytest.raises(FairError, match="unknown attribute 'scene'"):
        builder(ade_root).load("train", None, ["scene"], task=SegmentationTask())
    (ade_root / "ADEChallengeData2016/sceneCategories.txt").write_text("".join(f"{k} {v}\n" for k, v in SCENES.items()))
    data = builder(ade_root).read_split("train")
    assert data.values["scene"] == ("bedroom", "kitchen", "street")  # every scene of the file, both splits
    assert data.attributes["scene"].tolist() == [0, 2, 0]
    dataset = builder(ade_root, scenes=["street"]).load("validation", None, ["scene"], task=SegmentationTask())
    assert dataset.info.group_names == ("street", "other") and dataset.groups.tolist() == [1, 0]
    with pytest.raises(FairError, match="unknown scene 'beach'"):
        builder(ade_root, scenes=["beach"]).read_split("train")


def test_train_transform_crops_pads_and_keeps_labels(ade_root):
    dataset = builder(ade_root, crop_size=32, scale=(16, 12), ratio_range=(1.0, 1.0)).load(
        "train", None, None, train=True, task=SegmentationTask())
    assert dataset.info.preprocessing.image_size == 32 and dataset.info.preprocessing.mean == IMAGENET[0]
    torch.manual_seed(0)
    item = dataset[0]  # 40 x 30 -> 16 x 12 (factor min(16 / 40, 12 / 30)), padded to 32 x 32
    image, mask = item["image"], item["mask"]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) <= set(range(150)) | {255}
    assert (mask[12:] == 255).all() and (mask[:, 16:] == 255).all() and (mask[:12, :16] != 255).any()
    assert image[:, 12:].abs().max() < 1e-6  # padded with the mean: 0 once normalised, as mmseg pads
    for i in range(3):
        assert dataset[i]["image"].shape == (3, 32, 32)


def blocks(height, width, seed):
    """A mask of 6 x 6 blocks of 8 classes and unlabelled pixels, and an image coloured by it:
    each class a corner of the RGB cube, unlabelled pixels grey."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.tensor([0, 20, 40, 60, 80, 100, 120, 149, IGNORE_INDEX])
    coarse = classes[torch.randint(0, len(classes), (height // 6 + 1, width // 6 + 1), generator=generator)]
    mask = coarse.repeat_interleave(6, 0).repeat_interleave(6, 1)[:height, :width]
    palette = torch.full((256, 3), 0.5)
    palette[classes[:8]] = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=torch.float)
    return palette[mask].permute(2, 0, 1).contiguous(), mask, palette


def transform(**changes):
    params = {"scale": (96, 48), "ratio_range": (0.5, 2.0), "crop_size": 32, "cat_max_ratio": 0.75, "flip_prob": 0.5,
              "photometric": False, "pad_value": IMAGENET[0]}
    return TrainTransform(**{**params, **changes})


def interior(mask):
    """Labelled pixels whose 4 neighbours (in the crop) have their class: there bilinear and nearest resizing agree."""
    padded = torch.nn.functional.pad(mask.float(), (1, 1, 1, 1), value=-1)
    same = [padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx] == mask
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    return torch.stack(same).all(0) & (mask != IGNORE_INDEX)


def test_train_transform_moves_image_and_mask_together():
    """Inside the blocks (away from the edges bilinear and nearest resizing see differently) every
    pixel of the transformed image still has its mask class's colour; a misaligned pair would not."""
    image, mask, palette = blocks(50, 70, 0)
    classes = torch.tensor([0, 20, 40, 60, 80, 100, 120, 149])
    torch.manual_seed(1)
    matches, misaligned, pixels = 0, 0, 0
    for _ in range(20):
        out_image, out_mask = transform()(image, mask)
        inside = interior(out_mask)
        labels = out_mask[inside]
        matches += (classes[torch.cdist(out_image.permute(1, 2, 0)[inside], palette[classes]).argmin(1)] == labels).sum()
        misaligned += (classes[torch.cdist(out_image.flip(-1).permute(1, 2, 0)[inside], palette[classes]).argmin(1)] == labels).sum()
        pixels += len(labels)
    assert pixels > 20 * 32 * 32 * 0.2
    assert matches == pixels and misaligned < 0.5 * pixels


def test_flip_is_applied_to_both():
    image, mask, _ = blocks(32, 32, 2)
    same = {"scale": (32, 32), "ratio_range": (1.0, 1.0), "cat_max_ratio": 1.0}
    flipped_image, flipped_mask = transform(flip_prob=1.0, **same)(image, mask)
    assert torch.equal(flipped_image, image.flip(-1)) and torch.equal(flipped_mask, mask.flip(-1))
    kept_image, kept_mask = transform(flip_prob=0.0, **same)(image, mask)
    assert torch.equal(kept_image, image) and torch.equal(kept_mask, mask)


def test_crop_respects_cat_max_ratio_when_a_valid_crop_exists():
    mask = torch.zeros(64, 64, dtype=torch.long)  # left half class 0, right half columns of classes 1 and 2
    mask[:, 32:] = 1 + torch.arange(32) % 2
    image = torch.rand(3, 64, 64)
    same = {"scale": (64, 64), "ratio_range": (1.0, 1.0), "flip_prob": 0.0}
    torch.manual_seed(0)
    assert all(balanced(transform(**same)(image, mask)[1], 0.75) for _ in range(30))
    assert not all(balanced(transform(cat_max_ratio=1.0, **same)(image, mask)[1], 0.75) for _ in range(30))


def test_photometric_distortion_changes_only_the_image():
    image, mask, _ = blocks(40, 40, 3)
    same = {"scale": (40, 40), "ratio_range": (1.0, 1.0), "crop_size": 40, "cat_max_ratio": 1.0, "flip_prob": 0.0}
    torch.manual_seed(0)
    outputs = [transform(photometric=True, **same)(image, mask) for _ in range(8)]
    assert all(torch.equal(m, mask) for _, m in outputs)
    assert all(0 <= i.min() and i.max() <= 1 for i, _ in outputs)
    assert sum(not torch.allclose(i, image, atol=1e-5) for i, _ in outputs) >= 6


def test_eval_transform_resizes_the_image_only(ade_root):
    assert ADE20K(ADE20K.Params(root=ade_root)).pair_transform(False) == EvalTransform((2048, 512))
    dataset = builder(ade_root, scale=(64, 32)).load("validation", None, None, task=SegmentationTask())
    first, second = dataset[0], dataset[1]
    assert first["image"].shape == (3, 32, 43) and first["mask"].shape == (30, 40)  # factor min(64 / 40, 32 / 30)
    assert second["image"].shape == (3, 64, 31) and second["mask"].shape == (50, 24)  # factor min(64 / 50, 32 / 24)


def test_errors_name_the_file(ade_root, tmp_path):
    with pytest.raises(FairError, match="expected the official ADE20K layout at .*ADEChallengeData2016"):
        builder(tmp_path / "nowhere").read_split("train")
    with pytest.raises(FairError, match="expected the official ADE20K layout at .*ADEChallengeData2016.zip"):
        builder(ade_root, image_store="zip").read_split("train")
    annotation = ade_root / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png"
    annotation.unlink()
    with pytest.raises(FairError, match="annotation not found: .*annotations/training/ADE_train_00000002.png"):
        builder(ade_root).read_split("train")
    (ade_root / "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg").write_bytes(b"not a jpeg")
    data = builder(ade_root).read_split("validation")
    with pytest.raises(FairError, match="corrupt image .*ADE_val_00000001.jpg"):
        data.images[0]
    shutil.rmtree(ade_root / "ADEChallengeData2016/annotations/validation")
    with pytest.raises(FairError, match="folder not found: .*annotations/validation"):
        builder(ade_root).read_split("validation")


def test_a_tiny_run_reports_150_classes(ade_root, tmp_path):
    spec = parse_spec({
        "task": "segmentation",
        "data": {"name": "ade20k", "params": {"root": str(ade_root), "crop_size": 32, "scale": [64, 32]}},
        "model": {"name": "small_encoder_decoder", "params": {"width": 4}},
        "train": {"epochs": 1, "batch_size": 2},
        "eval": {"split": "validation", "bootstrap": 0, "batch_size": 1},
        "output_dir": str(tmp_path / "out"),
    })
    run(spec)
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert len(metrics["classes"]) == 150 and metrics["classes"][0]["class"] == "wall"
    assert metrics["overall"]["n"] == 2 and metrics["overall"]["pixels"] == sum(c["pixels"] for c in metrics["classes"])
