"""CelebA (Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015), in its official
layout::

    root/img_align_celeba/000001.jpg ...   # or root/img_align_celeba.zip, as distributed
    root/list_attr_celeba.txt       # count, 40 attribute names, then "000001.jpg -1 1 ..." rows
    root/list_eval_partition.txt    # "000001.jpg 0" (0 train, 1 valid, 2 test)

Any of the 40 attributes can be the target or protected attribute (value 1 = has it). The
fairness study's training set (``blond_subset``): the official train split with the
non-blond female cell (Blond_Hair = 0, Male = 0) subsampled to 2000 images (seeded).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .images import IMAGENET, STORE_HELP, ImageStoreKind, open_store, quote, read_text, require

PARTITIONS = {"train": 0, "val": 1, "test": 2}


class CelebAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description="folder with img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt")
    image_size: int = Field(224, ge=8)
    image_store: ImageStoreKind = Field("auto", description=STORE_HELP)
    blond_subset: bool = Field(False, description="subsample the non-blond female training cell to blond_subset_size")
    blond_subset_size: int = Field(2000, ge=1)
    seed: int = 0


def value_names(attribute: str) -> tuple[str, str]:
    return ("Female", "Male") if attribute == "Male" else (f"not {attribute}", attribute)


def read_attributes(path: Path) -> tuple[list[str], list[str], torch.Tensor]:
    """File names, attribute names and the 0/1 attribute table of list_attr_celeba.txt (a count
    line, a line of attribute names, then "000001.jpg -1 1 ..." rows of 1 / -1 values)."""
    lines = read_text(path, "attribute file").splitlines()
    if len(lines) < 2 or not lines[1].split():
        raise FairError(f"{path}: not a CelebA attribute file: expected a count line, then a line of attribute names")
    names = lines[1].split()
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FairError(f"{path}: line 2: attribute {quote(name)} named twice")
        seen.add(name)
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise FairError(f"{path}: line {number}: {len(parts) - 1} values, expected {len(names)} "
                            f"(a file name, then 1 or -1 for each attribute)")
        try:
            rows.append([int(v) > 0 for v in parts[1:]])
        except ValueError:
            bad = next((j for j, v in enumerate(parts[1:]) if not _is_int(v)), 0)
            raise FairError(f"{path}: line {number}: value {quote(parts[1 + bad])} of {names[bad]}, expected 1 or -1") from None
        files.append(parts[0])
    return files, names, torch.tensor(rows, dtype=torch.long).reshape(len(files), len(names))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_partition(path: Path) -> dict[str, int]:
    """``{"000001.jpg": 0, ...}`` from list_eval_partition.txt ("000001.jpg 0" lines; 0 train, 1 valid, 2 test)."""
    partition = {}
    for number, line in enumerate(read_text(path, "partition file").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise FairError(f"{path}: line {number}: expected 'file partition' with partition 0 (train), 1 (val) "
                            f"or 2 (test), got {quote(line.strip())}")
        partition[parts[0]] = int(parts[1])
    return partition


class CelebA(DatasetBuilder):
    """CelebA faces with their 40 binary attributes."""

    Params = CelebAParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "Blond_Hair"
    default_sensitive = ("Male",)
    description = "CelebA (official folder): any of the 40 attributes as target or protected"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, *IMAGENET)

    def read_split(self, split: str) -> SplitData:
        root = require(self.params.root, "CelebA root")
        files, names, table = read_attributes(root / "list_attr_celeba.txt")
        partition = read_partition(root / "list_eval_partition.txt")
        missing = [f for f in files if f not in partition]
        if missing:
            raise FairError(f"{root / 'list_eval_partition.txt'}: no partition for {len(missing)} images, e.g. {missing[0]}")
        keep = torch.tensor([partition[f] == PARTITIONS[split] for f in files])
        if split == "train" and self.params.blond_subset:
            keep = self._blond_subset(keep, names, table)
        rows = torch.nonzero(keep).flatten()
        store = open_store(root / "img_align_celeba", root / "img_align_celeba.zip", self.params.image_store)
        return SplitData(
            images=store.images([files[i] for i in rows.tolist()], self.params.image_size),
            attributes={name: table[rows, j] for j, name in enumerate(names)},
            values={name: value_names(name) for name in names},
        )

    def _blond_subset(self, keep: torch.Tensor, names: list[str], table: torch.Tensor) -> torch.Tensor:
        missing = [name for name in ("Blond_Hair", "Male") if name not in names]
        if missing:
            raise FairError(f"data.params.blond_subset: {self.params.root / 'list_attr_celeba.txt'} has no "
                            f"{' or '.join(missing)} attribute, which the blond subset needs")
        blond, male = table[:, names.index("Blond_Hair")], table[:, names.index("Male")]
        cell = torch.nonzero(keep & (blond == 0) & (male == 0)).flatten()
        generator = torch.Generator().manual_seed(self.params.seed)
        dropped = cell[torch.randperm(cell.numel(), generator=generator)[self.params.blond_subset_size:]]
        keep = keep.clone()
        keep[dropped] = False
        return keep
