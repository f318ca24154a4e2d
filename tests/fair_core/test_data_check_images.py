"""``fair data check --images``: every image (and mask) of every split decoded, the unreadable
ones named (file and reason, one line each), exit 2; and the helper the runner can call."""

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import FAIR, write_jpeg, write_utkface
from fair_core.data_stats import unreadable_images
from fair_core.tasks import SegmentationTask
from fair_data.ade20k import ADE20K
from fair_data.utkface import UTKFace


def fair(*args):
    return subprocess.run([*FAIR, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def utk_folder(tmp_path):
    """12 UTKFace images, all adults (so every file is in a split)."""
    return write_utkface(tmp_path / "UTKFace", 12, size=16)


def spec_of(tmp_path, root, **params):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"data": {"name": "utkface", "params": {"root": str(root), "image_size": 8, **params}},
                                "output_dir": str(tmp_path / "out")}))
    return path


def test_data_check_images_names_the_truncated_and_the_empty_file(tmp_path, utk_folder):
    spec = spec_of(tmp_path, utk_folder)
    clean = fair("data", "check", str(spec), "--images")
    assert clean.returncode == 0, clean.stderr
    assert "utkface train: 9 images" in clean.stdout and "train: all 9 images decode" in clean.stdout
    truncated, empty = utk_folder / "21_1_1_20170110001.jpg", utk_folder / "25_1_0_20170110005.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty.write_bytes(b"")
    result = fair("data", "check", str(spec), "--images", "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "utkface train: 9 images" in result.stdout  # the tables are still printed
    lines = result.stderr.splitlines()
    assert any(line.startswith("unreadable: ") and str(truncated) in line and "truncated" in line.lower() for line in lines), lines
    assert any(line.startswith("unreadable: ") and str(empty) in line and "an empty file" in line for line in lines), lines
    assert lines[-1] == "error: 2 unreadable file(s) among the 12 images of utkface (listed above)", lines


def test_data_check_images_lists_at_most_20(tmp_path, utk_folder):
    for i in range(25):
        (utk_folder / f"40_0_0_2018{i:04d}.jpg").write_bytes(b"not a jpeg")
    result = fair("data", "check", str(spec_of(tmp_path, utk_folder)), "--images")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert sum(line.startswith("unreadable: ") for line in lines) == 20
    assert "... and 5 more unreadable files" in lines
    assert lines[-1] == "error: 25 unreadable file(s) among the 37 images of utkface (listed above)"


def test_unreadable_images_decodes_masks_too_in_workers(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for folder in ("images/validation", "annotations/validation"):
        (base / folder).mkdir(parents=True)
    for i in range(1, 5):
        write_jpeg(base / f"images/validation/ADE_val_{i:08d}.jpg", i, (12, 10))
        Image.fromarray(np.ones((10, 12), np.uint8)).save(base / f"annotations/validation/ADE_val_{i:08d}.png")
    Image.new("RGB", (12, 10)).save(base / "annotations/validation/ADE_val_00000002.png")  # not a class mask
    (base / "images/validation/ADE_val_00000004.jpg").write_bytes(b"")
    dataset = ADE20K(ADE20K.Params(root=tmp_path)).load("validation", None, None, task=SegmentationTask())
    for workers in (0, 2):
        failures = unreadable_images(dataset, workers, progress=False)
        assert len(failures) == 2, failures
        assert "ADE_val_00000002.png: mode RGB, expected an 8-bit single-channel PNG" in failures[0]
        assert "ADE_val_00000004.jpg: an empty file" in failures[1]
    assert unreadable_images(dataset.select([0, 0, 2]), progress=False) == []  # each row once


def test_unreadable_images_of_a_clean_split(utk_folder):
    dataset = UTKFace(UTKFace.Params(root=utk_folder, image_size=8)).load("test", None, None)
    assert unreadable_images(dataset, 0, desc="test", progress=False) == []
