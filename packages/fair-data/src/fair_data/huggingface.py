"""Any Hugging Face image dataset (``datasets``): a Hub id, a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a folder of parquet files.

``image_column`` holds the images; ``attributes`` names the columns usable as target or protected
attributes. Value names come from ``ClassLabel`` features when the column has one, otherwise from
the sorted distinct values (strings, ints or bools). ``splits`` maps the names runs use (train,
test, ...) to the dataset's own split names. With ``HF_HUB_OFFLINE=1`` only local folders and the
cache are used.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .images import IMAGENET, decode, to_tensor


class HFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Hub dataset id, save_to_disk folder, or parquet folder")
    image_column: str = "image"
    attributes: list[str] = Field(min_length=2, description="columns usable as target / protected attributes")
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "test": "test"},
                                   description="run split name -> dataset split name")
    image_size: int = Field(224, ge=8)


def load_split(path_or_id: str, split_name: str, field: str = "data.params.path"):
    """One split of a Hugging Face dataset: a ``save_to_disk`` folder, a folder of parquet files
    (a file belongs to the split whose name is in its name or its folder's), or a Hub id."""
    import datasets

    path = Path(path_or_id)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            return loaded[split_name] if isinstance(loaded, datasets.DatasetDict) else loaded
        if path.is_dir():
            files = sorted(str(p) for p in path.rglob("*.parquet") if split_name in p.stem or split_name in p.parent.name)
            if not files:
                raise FairError(f"{field}: no parquet file for split {split_name!r} in {path}")
            return datasets.load_dataset("parquet", data_files={split_name: files}, split=split_name)
        return datasets.load_dataset(path_or_id, split=split_name)
    except FairError:
        raise
    except (KeyError, ValueError, FileNotFoundError, ConnectionError, OSError) as exc:
        where = "" if path.exists() else f"no folder {path_or_id}, and as a Hub dataset id: "
        raise FairError(f"{field}: cannot load split {split_name!r} of {path_or_id}: {where}"
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def require_columns(dataset, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise FairError(f"data.params: column(s) {', '.join(missing)} not in {where}; "
                        f"available: {', '.join(dataset.column_names)}")


class HFImages:
    """Lazy images of one column of a ``datasets.Dataset``.

    An ``Image`` column is read undecoded (its bytes or path) and decoded here, so JPEGs get
    reduced-scale decoding and a broken image gets an error naming its row."""

    def __init__(self, dataset, column: str, size: int, where: str):
        import datasets

        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset, self.column, self.size, self.where = dataset, column, size, where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        value = self.dataset[int(i)][self.column]
        where = f"{self.where}[{int(i)}]"
        if isinstance(value, dict):  # an undecoded Image: embedded bytes or a file path
            return decode(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"], where, self.size)
        if isinstance(value, Image.Image):
            return to_tensor(value, self.size, where)
        raise FairError(f"data.params.image_column: {where} is a {type(value).__name__}, not an image")


class HuggingFace(DatasetBuilder):
    """A Hugging Face image dataset with column mapping."""

    Params = HFParams
    default_target = ""
    default_sensitive = ()
    description = "any Hugging Face image dataset (Hub id, save_to_disk or parquet folder) with column mapping"

    def __init__(self, params: HFParams, name: str = ""):
        super().__init__(params, name or "hf")
        self.splits = tuple(params.splits)  # the run's split names, per instance
        self.default_target, self.default_sensitive = params.attributes[0], (params.attributes[1],)

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, *IMAGENET)

    def read_split(self, split: str) -> SplitData:
        import torch

        p = self.params
        dataset = load_split(p.path, p.splits[split])
        require_columns(dataset, [p.image_column, *p.attributes], p.path)
        attributes, values = {}, {}
        for column in p.attributes:
            feature = dataset.features[column]
            raw = dataset[column]
            if hasattr(feature, "names"):  # ClassLabel
                names, codes = tuple(feature.names), raw
            else:
                names = tuple(str(v) for v in sorted(set(raw)))
                index = {v: i for i, v in enumerate(sorted(set(raw)))}
                codes = [index[v] for v in raw]
            attributes[column], values[column] = torch.tensor(codes, dtype=torch.long), names
        return SplitData(HFImages(dataset, p.image_column, p.image_size, f"{p.path}:{split}"), attributes, values)
