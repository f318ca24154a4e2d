"""A folder of images with a labels CSV: any classification data written by another tool (for
instance VLBC's attribute-edited faces), in the layout::

    root/labels.csv        # file,split,shape,color   (split optional; one integer column per attribute)
    root/a/0001.png ...    # PNG / JPEG / ..., in any sub-folders; ``file`` is relative to root

``file`` is the image's path relative to ``root``; ``split`` is ``train``, ``val`` or ``test``.
Without a ``split`` column the param ``split`` says which split(s) the whole folder is (e.g.
``"train"`` for augmentation images). Every other column (or those named by ``attributes``) is
an attribute: integer codes ``0, 1, ...``, named by ``values`` (``{"color": ["colour",
"grayscale"]}``) or else ``"0", "1", ...`` up to the largest code in the whole file, so that
every split has the same value names. The first attribute column is the default target, the
second the default protected attribute.

The labels file is untrusted input: it is read within :data:`~fair_data.images.MAX_FILE_BYTES`,
and a missing column, a malformed row, a label that is not a non-negative integer (or has no
name in ``values``), an unknown split, or an image file that is missing or leaves ``root`` is
one :class:`~fair_core.FairError` line naming the file, the line and the column. Images are
decoded lazily (in the loader workers) with the bounds of :mod:`fair_data.images`.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .images import IMAGENET, one_line, open_store, quote, read_text, require

SPLITS = ("train", "val", "test")
SplitName = Literal["train", "val", "test"]
INTEGER = re.compile(r"^[+-]?\d+$")
MAX_CODE = 1_000_000  # a label above this is a typo, not a category (its value names would fill memory)


class ImageFolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description="folder of the images and the labels CSV")
    labels_file: str = Field("labels.csv", description="the labels CSV, relative to root: file[,split],<attribute>,...")
    image_size: int = Field(224, ge=8)
    split: list[SplitName] | None = Field(
        None, description="the split(s) the whole folder is when the labels CSV has no split column (e.g. train)")
    attributes: list[str] | None = Field(
        None, min_length=1, description="the attribute columns to use; every column but file and split when omitted")
    values: dict[str, list[str]] = Field(
        default_factory=dict, description='value names of an attribute\'s codes 0, 1, ... (e.g. {"color": '
                                          '["colour", "grayscale"]}); "0", "1", ... when omitted')
    mean: tuple[float, float, float] = Field(IMAGENET[0], description="per-channel mean of the normalisation")
    std: tuple[float, float, float] = Field(IMAGENET[1], description="per-channel std of the normalisation")

    @field_validator("split", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("split")
    @classmethod
    def _distinct_splits(cls, value):
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("name each split once, at least one")
        return value

    @field_validator("values")
    @classmethod
    def _distinct_values(cls, value):
        for attribute, names in value.items():
            if not names:
                raise ValueError(f"{attribute}: no value names")
            if len(set(names)) != len(names):
                raise ValueError(f"{attribute}: a value name is given twice")
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value):
        if any(s <= 0 for s in value):
            raise ValueError("every std must be positive")
        return value


@dataclass
class LabelTable:
    """The parsed labels file: one entry per row."""

    path: Path
    files: list[str]
    lines: list[int]
    splits: list[str] | None  # None: no split column
    codes: dict[str, torch.Tensor]
    values: dict[str, tuple[str, ...]]


def read_labels(path: Path, attributes: list[str] | None, values: dict[str, list[str]],
                has_split_param: bool) -> LabelTable:
    """Parse the labels CSV at ``path``; every problem is one :class:`FairError` line naming the
    file, the line and the column."""
    text = read_text(path, "labels file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise FairError(f"{path}: empty labels file; expected a header line such as file,split,<attribute>,...")
        header = [name.strip() for name in header]
        reader.fieldnames = header
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise FairError(f"{path}: line 1: column {quote(name)} named twice")
            seen.add(name)
        if "file" not in header:
            raise FairError(f"{path}: line 1: missing column 'file' (the image path relative to the folder); "
                            f"columns: {', '.join(header)}")
        has_split = "split" in header
        if has_split and has_split_param:
            raise FairError(f"data.params.split: {path} has a split column; the split param is for a labels file "
                            f"without one")
        if not has_split and not has_split_param:
            raise FairError(f"data.params.split: {path} has no split column; name the split(s) the whole folder is, "
                            f"e.g. \"split\": \"train\"")
        if attributes is None:
            attributes = [name for name in header if name not in ("file", "split")]
            if not attributes:
                raise FairError(f"{path}: line 1: no attribute column; expected file,split,<attribute>,... "
                                f"with one integer column per attribute")
        else:
            for name in attributes:
                if name in ("file", "split") or name not in header:
                    raise FairError(f"data.params.attributes: {path}: line 1: missing column {quote(name)}; "
                                    f"columns: {', '.join(header)}")
        for name in values:
            if name not in attributes:
                raise FairError(f"data.params.values: {quote(name)} is not an attribute column of {path}; "
                                f"attribute columns: {', '.join(attributes)}")
        columns = len(header)
        files: list[str] = []
        lines: list[int] = []
        splits: list[str] = []
        codes: dict[str, list[int]] = {name: [] for name in attributes}
        for row in reader:
            number = reader.line_num
            if None in row or None in row.values():  # more fields than the header (key None) or fewer (value None)
                found = columns + len(row.get(None, ())) if None in row else sum(v is not None for v in row.values())
                raise FairError(f"{path}: line {number}: {found} columns, expected {columns} ({','.join(header)})")
            if not any(v.strip() for v in row.values()):
                continue  # a blank line
            file = row["file"].strip()
            if not file:
                raise FairError(f"{path}: line {number}, column 'file': empty image path")
            if file.startswith("/") or ".." in file.replace("\\", "/").split("/"):
                raise FairError(f"{path}: line {number}, column 'file': image path {quote(file)} is not a relative "
                                f"path inside {path.parent}")
            if has_split:
                split = row["split"].strip()
                if split not in SPLITS:
                    raise FairError(f"{path}: line {number}, column 'split': unknown split {quote(split)}; "
                                    f"allowed: {', '.join(SPLITS)}")
                splits.append(split)
            for name in attributes:
                raw = row[name].strip()
                if not INTEGER.match(raw):
                    raise FairError(f"{path}: line {number}, column {quote(name)}: label {quote(raw)} is not an "
                                    f"integer; labels are codes 0, 1, ...")
                code = int(raw)
                limit = len(values[name]) if name in values else MAX_CODE + 1
                if code < 0 or code >= limit:
                    allowed = (f"0..{limit - 1} ({', '.join(values[name])})" if name in values
                               else f"0..{MAX_CODE}")
                    raise FairError(f"{path}: line {number}, column {quote(name)}: label {code} out of range; "
                                    f"allowed: {allowed}")
                codes[name].append(code)
            files.append(file)
            lines.append(number)
    except csv.Error as exc:
        raise FairError(f"{path}: line {reader.line_num + 1}: not a CSV row: {one_line(exc)}") from None
    if not files:
        raise FairError(f"{path}: no image rows after the header")
    tensors = {name: torch.tensor(c, dtype=torch.long) for name, c in codes.items()}
    names = {name: tuple(values[name]) if name in values else tuple(str(v) for v in range(int(t.max()) + 1))
             for name, t in tensors.items()}
    return LabelTable(path, files, lines, splits if has_split else None, tensors, names)


class ImageFolder(DatasetBuilder):
    """A folder of images with a labels CSV (file, split, one integer column per attribute)."""

    Params = ImageFolderParams
    description = "a folder of images + labels.csv (file, split, one integer column per attribute)"

    def __init__(self, params: ImageFolderParams, name: str = ""):
        super().__init__(params, name or "image_folder")
        self._table: LabelTable | None = None

    def table(self) -> LabelTable:
        """The labels file, read and checked once."""
        if self._table is None:
            p = self.params
            root = require(p.root, "image folder")
            self._table = read_labels(root / p.labels_file, p.attributes, p.values, p.split is not None)
        return self._table

    @property
    def splits(self) -> tuple[str, ...]:  # type: ignore[override]
        """The splits the folder holds: the param's, or those of the split column (in train, val, test order)."""
        if self.params.split is not None:
            return tuple(s for s in SPLITS if s in self.params.split)
        present = set(self.table().splits or ())
        return tuple(s for s in SPLITS if s in present)

    @property
    def default_target(self) -> str:  # type: ignore[override]
        return self._attribute_names()[0]

    @property
    def default_sensitive(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._attribute_names()[1:2])

    def _attribute_names(self) -> list[str]:
        return list(self.params.attributes) if self.params.attributes is not None else list(self.table().codes)

    def preprocessing(self) -> Preprocessing:
        p = self.params
        return Preprocessing(p.image_size, tuple(p.mean), tuple(p.std))

    def read_split(self, split: str) -> SplitData:
        p, table = self.params, self.table()
        if split not in self.splits:
            raise FairError(f"data split: no rows of split {split!r} in {table.path}; splits: {', '.join(self.splits)}")
        if table.splits is None:
            rows = list(range(len(table.files)))
        else:
            rows = [i for i, s in enumerate(table.splits) if s == split]
        root = p.root
        for i in rows:
            if not (root / table.files[i]).is_file():
                raise FairError(f"{table.path}: line {table.lines[i]}, column 'file': image not found: "
                                f"{root / table.files[i]}")
        index = torch.tensor(rows, dtype=torch.long)
        store = open_store(root, root.with_suffix(".zip"), "folder")
        return SplitData(
            images=store.images([table.files[i] for i in rows], p.image_size),
            attributes={name: codes[index] for name, codes in table.codes.items()},
            values=dict(table.values),
        )
