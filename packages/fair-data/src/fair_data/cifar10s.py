"""CIFAR-10S (Wang et al., "Towards Fairness in Visual Recognition: Effective Strategies for Bias
Mitigation", CVPR 2020): CIFAR-10 with colour vs grayscale skewed by class.

Built from CIFAR-10 as distributed, either

* the official python batches folder ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``, ``batches.meta``). These files are pickles; they are read with an unpickler that
  only accepts the numpy array constructors they contain, so reading them cannot run code; or
* a Hugging Face dataset (``uoft-cs/cifar10`` on the Hub, or its parquet / ``save_to_disk``
  folder) with an image column and a ``ClassLabel`` label column.

The construction of the paper (and of the fairness study):

* train: all 50,000 training images; in each even class (0, 2, 4, 6, 8) exactly
  ``round(skew_ratio * n)`` images are grayscale, in each odd class exactly
  ``round((1 - skew_ratio) * n)`` (seeded choice). Protected attribute ``color``: 1 = grayscale.
* test: the first ``n - val_per_class`` test images of each class (900 of 1,000), each present
  twice, once in colour and once in grayscale (18,000);
* val: the last ``val_per_class`` (100) test images of each class, in both versions (2,000).

Grayscale is the ITU-R 601 luma (PIL's ``"L"`` mode) copied to three channels. Training augments
with a 4-pixel padded random crop and a horizontal flip, as in the paper's code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .huggingface import load_split, require_columns
from .images import COLOR_VALUES, to_grayscale

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class CIFAR10SParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="cifar-10-batches-py folder, or a Hugging Face dataset (Hub id, parquet or save_to_disk folder)")
    skew_ratio: float = Field(0.95, ge=0.5, le=1.0, description="fraction of grayscale images in even classes (odd: 1 - this)")
    val_per_class: int = Field(100, ge=1, description="last test images of each class that form the val split")
    image_column: str = Field("img", description="image column of a Hugging Face dataset")
    label_column: str = Field("label", description="label column of a Hugging Face dataset")
    augment: bool = Field(True, description="random crop (padding 4) and horizontal flip in training")
    seed: int = 0


class _BatchUnpickler(pickle.Unpickler):
    """Accepts only what CIFAR's python batches hold: dicts, lists, strings and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3, 32, 32) uint8, labels (N,))`` of one python batch file."""
    if not path.exists():
        raise FairError(f"data.params.root: CIFAR batch not found: {path}")
    try:
        batch = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError, TypeError) as exc:
        raise FairError(f"{path}: not a CIFAR-10 python batch: {exc}") from None
    if len(images) != len(labels):
        raise FairError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


class CIFAR10S(DatasetBuilder):
    """CIFAR-10 with the colour/grayscale skew of CIFAR-10S."""

    Params = CIFAR10SParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "label"
    default_sensitive = ("color",)
    description = "CIFAR-10S (python batches or the Hub parquet): even classes mostly grayscale in training"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(32, *CIFAR_STATS)

    def train_transform(self):
        if not self.params.augment:
            return self.eval_transform()
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), self.preprocessing().normalize])

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        root = Path(self.params.root)
        if root.is_dir() and any((root / name).exists() for name in (*TRAIN_BATCHES, "test_batch")):
            parts = [read_batch(root / name) for name in (TRAIN_BATCHES if train else ("test_batch",))]
            images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        else:
            dataset = load_split(self.params.root, "train" if train else "test", field="data.params.root")
            p = self.params
            require_columns(dataset, [p.image_column, p.label_column], p.root)
            images = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in dataset[p.image_column]])
            images, labels = images.transpose(0, 3, 1, 2), np.asarray(dataset[p.label_column], dtype=np.int64)
        if images.shape[1:] != (3, 32, 32) or labels.min() < 0 or labels.max() >= len(CLASSES):
            raise FairError(f"data.params.root: {root} is not CIFAR-10 (images {images.shape[1:]}, labels "
                            f"{labels.min()}..{labels.max()})")
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)

    def read_split(self, split: str) -> SplitData:
        p = self.params
        images, labels = self._read(split == "train")
        if split == "train":
            generator = torch.Generator().manual_seed(p.seed)
            grayscale = torch.zeros(len(labels), dtype=torch.long)
            for c in range(len(CLASSES)):
                rows = torch.nonzero(labels == c).flatten()
                share = p.skew_ratio if c % 2 == 0 else 1.0 - p.skew_ratio
                chosen = rows[torch.randperm(rows.numel(), generator=generator)[:round(share * rows.numel())]]
                grayscale[chosen] = 1
            rows = torch.arange(len(labels))
        else:
            picked = []
            for c in range(len(CLASSES)):
                rows = torch.nonzero(labels == c).flatten()
                if rows.numel() <= p.val_per_class:
                    raise FairError(f"data.params.val_per_class: {p.val_per_class} leaves no test image of class {CLASSES[c]!r} "
                                    f"({rows.numel()} in the test batch)")
                picked.append(rows[-p.val_per_class:] if split == "val" else rows[:-p.val_per_class])
            once = torch.cat(picked).sort().values
            rows = torch.cat([once, once])
            grayscale = torch.cat([torch.zeros(len(once)), torch.ones(len(once))]).long()
        return SplitData(
            images=SkewedImages(images, rows, grayscale),
            attributes={"label": labels[rows], "color": grayscale},
            values={"label": CLASSES, "color": COLOR_VALUES},
        )


class SkewedImages:
    """``images[i]``: the uint8 image ``pixels[rows[i]]`` as floats in [0, 1], in grayscale when
    ``grayscale[i]`` (luma copied to three channels)."""

    def __init__(self, pixels: Tensor, rows: Tensor, grayscale: Tensor):
        self.pixels, self.rows, self.grayscale = pixels, rows, grayscale

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        image = self.pixels[self.rows[i]].float() / 255.0
        if self.grayscale[i]:
            image = to_grayscale(image).contiguous()
        return image
