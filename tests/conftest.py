"""Shared test set-up: offline Hugging Face Hub, quiet progress bars, small run specs."""

import json
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
FAIR = [sys.executable, "-m", "fair_core.cli"]


def small_spec(output_dir: Path, **sections) -> dict:
    """A fast ERM-on-synthetic spec (a few seconds on 2 CPU cores)."""
    spec = {
        "data": {"name": "synthetic", "params": {"train_size": 600, "val_size": 80, "test_size": 200, "image_size": 24}},
        "model": {"name": "small_cnn", "params": {"width": 8}},
        "method": {"name": "erm"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.002, "seed": 0},
        "eval": {"bootstrap": 50},
        "output_dir": str(output_dir),
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **values}
        else:
            spec[section] = values
    return spec


@pytest.fixture
def write_spec(tmp_path):
    def write(spec: dict, name: str = "spec.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(spec))
        return path

    return write
