"""Shared test set-up: offline Hugging Face Hub, quiet progress bars, small run specs."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
FAIR = [sys.executable, "-m", "fair_core.cli"]

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def write_jpeg(path, seed, size=(20, 24)):
    """A random-pixel JPEG of ``size`` (width, height) at ``path``."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_utkface(root: Path, n: int, size: int = 12) -> Path:
    """A UTKFace folder at ``root`` of ``n`` readable ``size`` px images, all adults (aged 20-49,
    so every image falls in a split)."""
    root.mkdir(parents=True)
    for i in range(n):
        write_jpeg(root / f"{20 + i % 30}_{i % 2}_{i % 5}_2017011{i:04d}.jpg", i, (size, size))
    return root


def dense_operating_point(embeddings, identities, fpr):
    """Verification at one operating point from full N x N matrices (the reference the block-wise
    code must equal): the threshold (the ceil(fpr * n_neg)-th largest ordered negative), and the
    boolean matrices accepted (s > t), same identity, and the diagonal."""
    import math

    import torch

    similarity = embeddings @ embeddings.T
    same = identities.unsqueeze(1) == identities.unsqueeze(0)
    itself = torch.eye(identities.numel(), dtype=torch.bool)
    negatives = similarity[~same]
    threshold = negatives.sort(descending=True).values[max(1, math.ceil(fpr * negatives.numel())) - 1]
    return threshold.item(), similarity > threshold, same, itself


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 1-epoch run on a small synthetic split (its config.json, weights, metrics.json
    with intervals), for tests that read or corrupt a run's files."""
    from fair_core.runner import run
    from fair_core.spec import parse_spec

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    run(parse_spec(small_spec(out, train={"epochs": 1}, eval={"bootstrap": 10},
                              data={"params": {"train_size": 128, "val_size": 16, "test_size": 32, "image_size": 16}})))
    return out
