"""CelebA-HQ (Karras et al., ICLR 2018) with the attributes of CelebAMask-HQ (Lee et al., CVPR
2020), in the layout CelebAMask-HQ is distributed in::

    root/CelebA-HQ-img/0.jpg ... 29999.jpg        # or root/CelebA-HQ-img.zip
    root/CelebAMask-HQ-attribute-anno.txt         # count, 40 attribute names, "0.jpg  1 -1 ..." rows
    root/CelebA-HQ-to-CelebA-mapping.txt          # "idx orig_idx orig_file" rows

Splits follow CelebA's official partition through the mapping file: an image is in train, val or
test as its original CelebA image is (original index below 162,770: train; below 182,637: val;
else test), so no face of a CelebA test image is trained on. Any of the 40 attributes can be the
target or protected attribute, as in :mod:`fair_data.celeba`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .celeba import read_attributes, value_names
from .images import IMAGENET, STORE_HELP, ImageStoreKind, open_store, quote, read_text, require

# First original CelebA index of the val and test partitions (list_eval_partition.txt).
CELEBA_VAL_START, CELEBA_TEST_START = 162_770, 182_637


class CelebAHQParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description="CelebAMask-HQ folder: CelebA-HQ-img/, CelebAMask-HQ-attribute-anno.txt, "
                                   "CelebA-HQ-to-CelebA-mapping.txt")
    image_size: int = Field(224, ge=8)
    image_store: ImageStoreKind = Field("auto", description=STORE_HELP)


def read_partition(path: Path) -> dict[str, str]:
    """``{"0.jpg": "train", ...}`` from the CelebA-HQ to CelebA mapping file."""
    partition = {}
    for number, line in enumerate(read_text(path, "mapping file").splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0] == "idx":
            continue
        try:
            original = int(parts[1])
            int(parts[0])
        except (IndexError, ValueError):
            raise FairError(f"{path}: line {number} is not 'idx orig_idx orig_file': {quote(line.strip())}") from None
        split = "train" if original < CELEBA_VAL_START else "val" if original < CELEBA_TEST_START else "test"
        partition[f"{parts[0]}.jpg"] = split
    return partition


class CelebAHQ(DatasetBuilder):
    """CelebA-HQ faces with the 40 CelebA attributes of CelebAMask-HQ."""

    Params = CelebAHQParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "Blond_Hair"
    default_sensitive = ("Male",)
    description = "CelebA-HQ images + CelebAMask-HQ attributes, split as CelebA"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, *IMAGENET)

    def read_split(self, split: str) -> SplitData:
        root = require(self.params.root, "CelebA-HQ root")
        files, names, table = read_attributes(root / "CelebAMask-HQ-attribute-anno.txt")
        partition = read_partition(root / "CelebA-HQ-to-CelebA-mapping.txt")
        missing = [f for f in files if f not in partition]
        if missing:
            raise FairError(f"{root / 'CelebA-HQ-to-CelebA-mapping.txt'}: no mapping for {len(missing)} images, e.g. {missing[0]}")
        rows = torch.tensor([i for i, f in enumerate(files) if partition[f] == split], dtype=torch.long)
        store = open_store(root / "CelebA-HQ-img", root / "CelebA-HQ-img.zip", self.params.image_store)
        return SplitData(
            images=store.images([files[i] for i in rows.tolist()], self.params.image_size),
            attributes={name: table[rows, j] for j, name in enumerate(names)},
            values={name: value_names(name) for name in names},
        )
