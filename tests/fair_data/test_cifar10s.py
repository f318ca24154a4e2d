"""CIFAR-10S on tiny CIFAR-10 copies in both distributed formats: python batches and Hub parquet."""

import pickle

import numpy as np
import pytest
import torch

from fair_core import FairError
from fair_data.cifar10s import CIFAR10S
from fair_data.images import LUMA

PER_CLASS_TRAIN, PER_CLASS_TEST = 20, 5


def cifar_arrays(n_per_class, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(labels)
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return data, labels


@pytest.fixture
def batches_root(tmp_path):
    """cifar-10-batches-py with 5 training batches (40 images each) and a test batch, pickled as the
    official files are (protocol 2, a dict with a uint8 ``data`` array and a ``labels`` list)."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data, labels = cifar_arrays(PER_CLASS_TRAIN, 0)
    for i in range(5):
        part = slice(40 * i, 40 * (i + 1))
        batch = {"batch_label": f"training batch {i + 1} of 5", "labels": labels[part].tolist(), "data": data[part],
                 "filenames": [f"img_{j}.png" for j in range(40)]}
        (root / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test_data, test_labels = cifar_arrays(PER_CLASS_TEST, 1)
    test = {"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(), "data": test_data}
    (root / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    return root


def test_train_skew_is_exact_per_class(batches_root):
    builder = CIFAR10S(CIFAR10S.Params(root=str(batches_root), skew_ratio=0.9))
    train = builder.load("train", None, None)
    assert len(train) == 200 and train.info.group_names == ("colour", "grayscale")
    counts = train.cell_counts()  # [class, colour/grayscale]
    assert counts[0::2].tolist() == [[2, 18]] * 5  # even classes: exactly 90% grayscale
    assert counts[1::2].tolist() == [[18, 2]] * 5  # odd classes: exactly 10%


def test_test_and_val_hold_every_image_in_colour_and_grayscale(batches_root):
    builder = CIFAR10S(CIFAR10S.Params(root=str(batches_root), val_per_class=1, augment=False))
    test, val = builder.load("test", None, None), builder.load("val", None, None)
    assert len(test) == 2 * 10 * (PER_CLASS_TEST - 1) and len(val) == 2 * 10
    assert test.cell_counts().tolist() == [[PER_CLASS_TEST - 1] * 2] * 10
    split = test.split
    half = len(test) // 2
    assert torch.equal(split.attributes["color"], torch.tensor([0] * half + [1] * half))
    data, labels = cifar_arrays(PER_CLASS_TEST, 1)
    first_of_class = {c: int(np.nonzero(labels == c)[0][0]) for c in range(10)}
    assert split.images.rows[:half].tolist() == sorted(i for c in range(10) for i in np.nonzero(labels == c)[0][:-1])
    assert int(split.images.rows[half - 1]) not in [int(np.nonzero(labels == c)[0][-1]) for c in range(10)]
    # the same image, once in colour, once in grayscale (luma on three channels)
    row = first_of_class[3]
    colour = split.images[split.images.rows.tolist().index(row)]
    gray = split.images[half + split.images.rows.tolist().index(row)]
    expected = torch.from_numpy(data[row].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(colour, expected)
    assert torch.allclose(gray, (expected * LUMA.view(3, 1, 1)).sum(0).expand(3, -1, -1))
    assert torch.equal(gray[0], gray[2])


def test_batches_are_read_without_running_code(batches_root, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (batches_root / "test_batch").write_bytes(pickle.dumps({"data": Exploit(), "labels": []}, protocol=2))
    with pytest.raises(FairError, match="test_batch: not a CIFAR-10 python batch: refusing .*print"):
        CIFAR10S(CIFAR10S.Params(root=str(batches_root))).load("test", None, None)
    assert "pwned" not in capsys.readouterr().out
    (batches_root / "data_batch_3").unlink()
    with pytest.raises(FairError, match="CIFAR batch not found: .*data_batch_3"):
        CIFAR10S(CIFAR10S.Params(root=str(batches_root))).load("train", None, None)


def test_hub_parquet_layout(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=[
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])})
    root = tmp_path / "cifar10" / "plain_text"
    root.mkdir(parents=True)
    for split, (n, seed) in {"train": (PER_CLASS_TRAIN, 0), "test": (PER_CLASS_TEST, 1)}.items():
        data, labels = cifar_arrays(n, seed)
        images = [Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0)) for row in data]
        datasets.Dataset.from_dict({"img": images, "label": labels.tolist()}, features=features).to_parquet(
            root / f"{split}-00000-of-00001.parquet")
    builder = CIFAR10S(CIFAR10S.Params(root=str(tmp_path / "cifar10"), val_per_class=1))
    train = builder.load("train", None, None, train=True)
    assert train.cell_counts()[0].tolist() == [1, 19] and train[0]["image"].shape == (3, 32, 32)
    test = builder.load("test", None, None)
    data, _ = cifar_arrays(PER_CLASS_TEST, 1)
    row = int(test.split.images.rows[0])
    assert torch.allclose(test.split.images[0], torch.from_numpy(data[row].reshape(3, 32, 32)).float() / 255)  # PNG is lossless


def test_missing_root_is_named(tmp_path):
    with pytest.raises(FairError, match="data.params.root: cannot load split 'train' of .*nowhere: no folder .*nowhere, "
                                        "and as a Hub dataset id"):
        CIFAR10S(CIFAR10S.Params(root=str(tmp_path / "nowhere"))).load("train", None, None)
