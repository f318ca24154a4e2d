"""FairFace (Karkkainen & Joo, "FairFace: Face Attribute Dataset for Balanced Race, Gender, and
Age", WACV 2021), in the layout it is distributed in::

    root/fairface_label_train.csv     # file,age,gender,race[,service_test]  (file = train/1.jpg)
    root/fairface_label_val.csv       # file = val/1.jpg
    root/train/1.jpg ... root/val/1.jpg            # or the zip they come in:
    root/fairface-img-margin025-trainval.zip       # (``images_zip``; margin 1.25 also published)

Attributes: ``race`` (the 7 FairFace groups, or ``race_groups="binary"``: White vs Others),
``gender`` (Male, Female) and ``age`` (the 9 published bins, 0-2 ... more than 70).

FairFace publishes a train and a validation set; papers report on the validation set, so it is
the ``test`` split here, and ``val`` is a seeded ``val_fraction`` of the official train set.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .images import IMAGENET, STORE_HELP, ImageStoreKind, one_line, open_store, quote, read_text, require

RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
GENDERS = ("Male", "Female")
AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
VALUES = {"race": RACES, "gender": GENDERS, "age": AGES}


class FairFaceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description="folder with fairface_label_{train,val}.csv and train/, val/ (or the images zip)")
    images_zip: str = Field("fairface-img-margin025-trainval.zip", description="zip of train/ and val/ inside root")
    image_store: ImageStoreKind = Field("auto", description=STORE_HELP)
    image_size: int = Field(224, ge=8)
    race_groups: Literal["7", "binary"] = Field("7", description="the 7 FairFace races, or White vs Others")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the official train set held out as val")
    seed: int = 0


def read_labels(path: Path) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Image names and the race/gender/age codes of one FairFace label CSV (UTF-8, at most
    :data:`~fair_data.images.MAX_FILE_BYTES`); a malformed row is one line naming its line."""
    reader = csv.DictReader(io.StringIO(read_text(path, "label file"), newline=""))
    try:
        missing = [c for c in ("file", *VALUES) if c not in (reader.fieldnames or [])]
        if missing:
            raise FairError(f"{path}: missing column(s) {', '.join(missing)}; expected file,age,gender,race")
        columns = len(reader.fieldnames)
        files, codes = [], {name: [] for name in VALUES}
        for row in reader:
            number = reader.line_num
            if None in row or None in row.values():  # more fields than the header (key None) or fewer (value None)
                found = columns + len(row.get(None, ())) if None in row else sum(v is not None for v in row.values())
                raise FairError(f"{path}: line {number}: {found} columns, expected {columns} ({','.join(reader.fieldnames)})")
            for name, allowed in VALUES.items():
                if row[name] not in allowed:
                    raise FairError(f"{path}: line {number}: unknown {name} {quote(row[name])}; allowed: {', '.join(allowed)}")
                codes[name].append(allowed.index(row[name]))
            files.append(row["file"])
    except csv.Error as exc:
        raise FairError(f"{path}: line {reader.line_num + 1}: not a CSV row: {one_line(exc)}") from None
    return files, {name: torch.tensor(v, dtype=torch.long) for name, v in codes.items()}


class FairFace(DatasetBuilder):
    """FairFace faces with race (7 groups), gender and age."""

    Params = FairFaceParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "gender"
    default_sensitive = ("race",)
    description = "FairFace (label CSVs + image folder or zip): race (7), gender, age"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, *IMAGENET)

    def read_split(self, split: str) -> SplitData:
        p = self.params
        root = require(p.root, "FairFace root")
        files, attributes = read_labels(root / f"fairface_label_{'val' if split == 'test' else 'train'}.csv")
        if not files:
            raise FairError(f"data.params.root: no images listed in the FairFace label file of split {split!r} in {root}")
        rows = torch.arange(len(files))
        if split != "test":
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(p.seed))
            n_val = max(1, round(p.val_fraction * len(files)))
            rows = (order[:n_val] if split == "val" else order[n_val:]).sort().values
        values = dict(VALUES)
        if p.race_groups == "binary":
            attributes["race"], values["race"] = (attributes["race"] != 0).long(), ("White", "Others")
        kind = p.image_store
        if kind == "auto":
            kind = "folder" if (root / files[0].split("/")[0]).is_dir() or not (root / p.images_zip).exists() else "zip"
        store = open_store(root, root / p.images_zip, kind)
        return SplitData(
            images=store.images([files[i] for i in rows.tolist()], p.image_size),
            attributes={name: codes[rows] for name, codes in attributes.items()},
            values=values,
        )
