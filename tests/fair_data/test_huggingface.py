"""The `hf` loader on a save_to_disk folder and a parquet folder (HF_HUB_OFFLINE=1, see conftest)."""

import numpy as np
import pytest
import torch
from PIL import Image

from fair_core import FairError
from fair_data.huggingface import HuggingFace
from fair_data.images import to_tensor

datasets = pytest.importorskip("datasets")


def image_dataset(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]),
                                  "skin": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)],
                                       "skin": ["light" if i % 3 else "dark" for i in range(n)]}, features=features)


def check(builder: HuggingFace, n_train: int):
    train = builder.load("train", "label", ["skin"])
    assert len(train) == n_train
    assert train.info.class_names == ("cat", "dog") and train.info.group_names == ("dark", "light")
    expected = [[sum(1 for i in range(n_train) if i % 2 == y and (i % 3 != 0) == bool(g)) for g in (0, 1)] for y in (0, 1)]
    assert train.cell_counts().tolist() == expected
    original = image_dataset(n_train, 0)[3]["image"]  # stored as PNG: lossless
    assert torch.equal(train.split.images[3], to_tensor(original, 8))


def test_hf_save_to_disk_folder(tmp_path):
    datasets.DatasetDict({"train": image_dataset(12, 0), "test": image_dataset(6, 1)}).save_to_disk(str(tmp_path / "ds"))
    builder = HuggingFace(HuggingFace.Params(path=str(tmp_path / "ds"), attributes=["label", "skin"], image_size=8))
    check(builder, 12)
    assert len(builder.load("test", None, None)) == 6  # defaults: first attribute target, second protected


def test_hf_parquet_folder(tmp_path):
    folder = tmp_path / "parquet"
    folder.mkdir()
    image_dataset(12, 0).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    image_dataset(6, 1).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    check(HuggingFace(HuggingFace.Params(path=str(folder), attributes=["label", "skin"], image_size=8)), 12)


def test_hf_errors_name_the_problem(tmp_path):
    datasets.DatasetDict({"train": image_dataset(4, 0)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(FairError, match="column\\(s\\) age not in .*available: image, label, skin"):
        HuggingFace(HuggingFace.Params(path=str(tmp_path / "ds"), attributes=["label", "age"])).load("train", None, None)
    with pytest.raises(FairError, match="cannot load split 'test'"):
        HuggingFace(HuggingFace.Params(path=str(tmp_path / "ds"), attributes=["label", "skin"])).load("test", None, None)
    with pytest.raises(FairError, match="data.params.path: cannot load"):
        HuggingFace(HuggingFace.Params(path="nobody/not-a-dataset", attributes=["a", "b"])).load("train", None, None)


def test_hf_corrupt_image_names_its_row(tmp_path):
    broken = image_dataset(4, 0).cast_column("image", datasets.Image(decode=False))
    broken = broken.map(lambda row, i: {"image": {"bytes": b"garbage" if i == 2 else row["image"]["bytes"], "path": None}},
                        with_indices=True)
    datasets.DatasetDict({"train": broken}).save_to_disk(str(tmp_path / "ds"))
    train = HuggingFace(HuggingFace.Params(path=str(tmp_path / "ds"), attributes=["label", "skin"], image_size=8)).load(
        "train", None, None)
    assert train[1]["image"].shape == (3, 8, 8)
    with pytest.raises(FairError, match="corrupt image .*ds:train\\[2\\]"):
        train[2]
