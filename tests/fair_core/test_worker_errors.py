"""A user error raised while a DataLoader worker decodes an image is one line, as in the main process."""

import os
import subprocess

import pytest

from conftest import FAIR, small_spec, write_utkface


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_read_in_a_worker_is_one_line_naming_the_file(tmp_path, write_spec, workers):
    root = write_utkface(tmp_path / "UTKFace", 40)
    corrupt = root / "25_1_0_20170119999.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a jpeg")
    spec = small_spec(tmp_path / "out", data={"name": "utkface", "params": {"root": str(root), "image_size": 12}},
                      train={"epochs": 1, "batch_size": 64, "num_workers": workers}, eval={"bootstrap": 0})
    result = subprocess.run([*FAIR, "run", str(write_spec(spec))], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert str(corrupt) in lines[0] and lines[0].startswith("error: ")


def test_an_unreadable_evaluation_image_stops_the_run_before_training(tmp_path, write_spec):
    root = write_utkface(tmp_path / "UTKFace", 40)
    empty = root / "25_1_0_20170119999.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    spec = small_spec(out, data={"name": "utkface", "params": {"root": str(root), "image_size": 12}},
                      train={"epochs": 1}, eval={"bootstrap": 0, "split": "train"})
    result = subprocess.run([*FAIR, "run", str(write_spec(spec))], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "unreadable file(s) in the train split, found before training" in result.stderr and str(empty) in result.stderr
    assert not (out / "checkpoint.safetensors").exists()
