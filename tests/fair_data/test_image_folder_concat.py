"""The `image_folder` dataset (a folder of images + labels.csv) and `concat` (datasets joined split
by split, evaluation from the first part): what VLBC's augmentation runs are made of."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_spec
from fair_core import FairError
from fair_core.runner import resolve, run
from fair_core.spec import parse_spec
from fair_data.concat import Concat, ConcatParams
from fair_data.image_folder import ImageFolder, ImageFolderParams
from fair_data.synthetic import Synthetic, SyntheticParams

SIZE = 16
NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}  # synthetic's normalisation
VALUES = {"shape": ["square", "circle"], "color": ["colour", "grayscale"]}
SYNTHETIC = {"train_size": 64, "val_size": 16, "test_size": 32, "image_size": SIZE}


def write_folder(root: Path, n: int = 24, seed: int = 7, splits=None) -> dict:
    """``n`` PNGs of synthetic images (seed ``seed``) in two sub-folders of ``root`` with a
    labels.csv (a split column when ``splits`` gives one split per image); returns the uint8
    pixels and labels written."""
    data = Synthetic(SyntheticParams(train_size=max(n, 8), image_size=SIZE, seed=seed)).read_split("train")
    pixels = (data.images[:n] * 255).round().to(torch.uint8)
    rows = []
    for i in range(n):
        file = f"{'a' if i % 2 else 'b'}/img_{i:03d}.png"
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i].permute(1, 2, 0).numpy()).save(root / file)
        row = {"file": file, "shape": int(data.attributes["shape"][i]), "color": int(data.attributes["color"][i])}
        if splits is not None:
            row = {"file": file, "split": splits[i], **{k: v for k, v in row.items() if k != "file"}}
        rows.append(row)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"pixels": pixels, "shape": data.attributes["shape"][:n], "color": data.attributes["color"][:n]}


def folder(root: Path, **params) -> ImageFolder:
    return ImageFolder(ImageFolderParams(root=root, image_size=SIZE, **params))


def test_folder_reads_back_exactly_the_pixels_and_labels_written(tmp_path):
    splits = ["train"] * 16 + ["val"] * 4 + ["test"] * 4
    written = write_folder(tmp_path / "f", splits=splits)
    builder = folder(tmp_path / "f", values=VALUES, **NORM)
    assert builder.splits == ("train", "val", "test")
    assert (builder.default_target, builder.default_sensitive) == ("shape", ("color",))
    for split, rows in (("train", range(16)), ("val", range(16, 20)), ("test", range(20, 24))):
        data = builder.read_split(split)
        rows = list(rows)
        assert len(data.images) == len(rows)
        images = torch.stack([data.images[i] for i in range(len(rows))])
        assert torch.equal(images, written["pixels"][rows].float() / 255)  # PNG is lossless, no resize at SIZE
        assert torch.equal(data.attributes["shape"], written["shape"][rows])
        assert torch.equal(data.attributes["color"], written["color"][rows])
        assert data.values == {"shape": ("square", "circle"), "color": ("colour", "grayscale")}
    dataset = builder.load("test", None, None)
    assert dataset.info.class_names == ("square", "circle") and dataset.info.group_names == ("colour", "grayscale")
    assert builder.preprocessing().mean == (0.5, 0.5, 0.5) and builder.preprocessing().std == (0.25, 0.25, 0.25)
    # normalised with the params' mean / std
    assert torch.allclose(dataset[0]["image"], (written["pixels"][20].float() / 255 - 0.5) / 0.25)


def test_folder_without_split_column_takes_the_split_param_and_names_values_by_code(tmp_path):
    written = write_folder(tmp_path / "f", n=10)
    builder = folder(tmp_path / "f", split="train")
    assert builder.splits == ("train",)
    data = builder.read_split("train")
    assert len(data.images) == 10 and torch.equal(data.attributes["color"], written["color"])
    assert data.values["shape"] == ("0", "1")
    assert folder(tmp_path / "f", split=["val", "test"]).splits == ("val", "test")
    with pytest.raises(FairError, match=r"data\.params\.split: .*labels\.csv has no split column"):
        _ = folder(tmp_path / "f").splits
    with pytest.raises(FairError, match="unknown split 'test'"):
        builder.load("test", None, None)


def one_line_error(builder: ImageFolder, split: str = "train") -> str:
    with pytest.raises(FairError) as caught:
        builder.read_split(split)
    message = str(caught.value)
    assert "\n" not in message
    return message


def rewrite(root: Path, edit) -> None:
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(edit(lines)) + "\n")


def test_folder_errors_are_one_line_naming_file_row_and_column(tmp_path):
    root = tmp_path / "f"
    write_folder(root, n=8, splits=["train"] * 8)
    labels = root / "labels.csv"

    (root / "a/img_003.png").unlink()  # a missing image: line 5 (header + rows 0..3)
    message = one_line_error(folder(root))
    assert str(labels) in message and "line 5" in message and "column 'file'" in message and "img_003.png" in message

    write_folder(root, n=8, splits=["train"] * 8)
    rewrite(root, lambda lines: [lines[0].replace("color", "colour")] + lines[1:])
    with pytest.raises(FairError, match=r"data\.params\.values: 'color' is not an attribute column"):
        folder(root, values=VALUES).read_split("train")
    message = one_line_error(folder(root, attributes=["shape", "color"]))
    assert str(labels) in message and "line 1" in message and "missing column 'color'" in message

    write_folder(root, n=8, splits=["train"] * 8)
    rewrite(root, lambda lines: [lines[0].replace("file", "path")] + lines[1:])
    message = one_line_error(folder(root))
    assert str(labels) in message and "missing column 'file'" in message

    write_folder(root, n=8, splits=["train"] * 8)
    rewrite(root, lambda lines: lines[:3] + [lines[3].rsplit(",", 1)[0] + ",gray"] + lines[4:])
    message = one_line_error(folder(root))
    assert str(labels) in message and "line 4" in message and "column 'color'" in message and "'gray'" in message

    write_folder(root, n=8, splits=["train"] * 8)
    rewrite(root, lambda lines: lines[:2] + [lines[2].rsplit(",", 1)[0] + ",2"] + lines[3:])
    message = one_line_error(folder(root, values=VALUES))
    assert "line 3" in message and "column 'color'" in message and "label 2 out of range" in message
    rewrite(root, lambda lines: lines[:2] + [lines[2].rsplit(",", 1)[0] + ",-1"] + lines[3:])
    assert "label -1 out of range" in one_line_error(folder(root))

    write_folder(root, n=8, splits=["train"] * 8)
    rewrite(root, lambda lines: lines[:6] + [lines[6].replace(",train,", ",training,")] + lines[7:])
    message = one_line_error(folder(root))
    assert "line 7" in message and "column 'split'" in message and "unknown split 'training'" in message

    write_folder(root, n=8, splits=["train"] * 8)
    rewrite(root, lambda lines: lines[:2] + ["../outside.png" + lines[2][lines[2].index(","):]] + lines[3:])
    message = one_line_error(folder(root))
    assert "line 3" in message and "column 'file'" in message and "not a relative path" in message

    write_folder(root, n=8, splits=["train"] * 8)
    with pytest.raises(FairError, match=r"data\.params\.split: .*has a split column"):
        folder(root, split="train").read_split("train")
    with pytest.raises(FairError, match="labels file not found"):
        folder(root, labels_file="nope.csv").read_split("train")


def concat(*parts, **params) -> Concat:
    return Concat(ConcatParams(datasets=[{"name": n, "params": p} for n, p in parts], **params))


def test_concat_joins_train_and_evaluates_on_the_first_part_only(tmp_path):
    written = write_folder(tmp_path / "edited", n=24, seed=5)
    edited = {"root": str(tmp_path / "edited"), "split": "train", "image_size": SIZE, "values": VALUES, **NORM}
    builder = concat(("synthetic", SYNTHETIC), ("image_folder", edited))
    assert builder.splits == ("train", "val", "test") and builder.tasks == ("classification",)
    assert (builder.default_target, builder.default_sensitive) == ("shape", ("color",))
    real = Synthetic(SyntheticParams(**SYNTHETIC))

    train = builder.load("train", None, None, train=True)
    assert len(train) == 64 + 24
    real_train = real.read_split("train")
    assert torch.equal(train.split.attributes["shape"], torch.cat([real_train.attributes["shape"], written["shape"]]))
    assert torch.equal(train.split.images[3], real_train.images[3])
    assert torch.equal(train.split.images[64 + 5], written["pixels"][5].float() / 255)
    assert torch.equal(train.split.images[-1], written["pixels"][23].float() / 255)

    test = builder.load("test", None, None)
    assert len(test) == 32 and torch.equal(test.split.images, real.read_split("test").images)
    assert len(builder.load("val", None, None)) == 16

    # eval_from "all": a folder holding test images adds them to test; train_splits decides what is joined
    write_folder(tmp_path / "more", n=12, seed=9, splits=["train"] * 8 + ["test"] * 4)
    more = {**edited, "root": str(tmp_path / "more")}
    del more["split"]
    assert len(concat(("synthetic", SYNTHETIC), ("image_folder", more), eval_from="all").load("test", None, None)) == 32 + 4
    assert len(concat(("synthetic", SYNTHETIC), ("image_folder", more)).load("test", None, None)) == 32
    assert len(concat(("synthetic", SYNTHETIC), ("image_folder", more), train_splits=["train", "test"])
               .read_split("test").images) == 32 + 4


def test_concat_refuses_parts_that_disagree(tmp_path):
    write_folder(tmp_path / "edited", n=8, seed=5)
    edited = {"root": str(tmp_path / "edited"), "split": "train", "image_size": SIZE, "values": VALUES, **NORM}

    def refused(*parts) -> str:
        with pytest.raises(FairError) as caught:
            concat(*parts).read_split("train")
        message = str(caught.value)
        assert "\n" not in message and "0 (synthetic)" in message and "1 (image_folder)" in message
        return message

    rewrite(tmp_path / "edited", lambda lines: [lines[0].replace("color", "tone")] + lines[1:])
    message = refused(("synthetic", SYNTHETIC), ("image_folder", {**edited, "values": {"shape": VALUES["shape"]}}))
    assert "attribute names" in message and "color, shape vs shape, tone" in message

    write_folder(tmp_path / "edited", n=8, seed=5)
    message = refused(("synthetic", SYNTHETIC), ("image_folder", {**edited, "values": {}}))
    assert "value names of 'shape'" in message and "square, circle vs 0, 1" in message
    message = refused(("synthetic", SYNTHETIC), ("image_folder", {**edited, "image_size": 24}))
    assert "image size: 16 vs 24" in message
    message = refused(("synthetic", SYNTHETIC), ("image_folder", {**edited, "mean": [0.4, 0.5, 0.5]}))
    assert "normalisation mean" in message

    with pytest.raises(FairError, match=r"data\.params\.datasets\.1\.name: unknown dataset 'nope'"):
        concat(("synthetic", SYNTHETIC), ("nope", {}))
    with pytest.raises(FairError, match=r"data\.params\.datasets\.1\.params\.train_size"):
        concat(("synthetic", SYNTHETIC), ("synthetic", {"train_size": -1}))
    with pytest.raises(Exception, match="at least 2"):
        concat(("synthetic", SYNTHETIC))


def test_run_of_a_concat_spec_finishes_and_evaluates_on_the_real_test_split(tmp_path):
    write_folder(tmp_path / "edited", n=24, seed=5)
    edited = {"root": str(tmp_path / "edited"), "split": "train", "image_size": SIZE, "values": VALUES, **NORM}
    data = {"name": "concat", "params": {"datasets": [{"name": "synthetic", "params": SYNTHETIC},
                                                      {"name": "image_folder", "params": edited}]}}
    spec = parse_spec(small_spec(tmp_path / "run", data=data, train={"epochs": 1, "batch_size": 32},
                                 eval={"bootstrap": 0}))
    assert len(resolve(spec).dataset.load("train", None, None)) == 88
    result = run(spec)
    assert sum(g["n"] for g in result["groups"]) == 32  # synthetic's test split only
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "model.safetensors").exists()
    assert np.isfinite(result["overall"]["accuracy"])
