"""UTKFace (Zhang et al., "Age Progression/Regression by Conditional Adversarial Autoencoder",
CVPR 2017): a folder of ``age_gender_race_date.jpg`` files (``.jpg.chip.jpg`` too), or the zip
of that folder (``root`` = ``.../UTKFace`` reads ``.../UTKFace.zip`` when the folder is absent).

Attributes: ``gender`` (0 Male, 1 Female), ``race`` (``race_groups``: "binary" = White vs Others
as in the fairness study, or "all" = White, Black, Asian, Indian, Others), ``age`` (``age_groups``:
"study" = adult (>= 20) vs child (<= 10), 11-19 dropped; or "bins" with ``age_bins`` edges).

Splits as the study built them: a seeded 80/20 split of the files; the 20% is halved into val
and test (natural distribution). With ``bias_attribute`` set, the training split is biased
like the study's: in each group ``b`` of that attribute the aligned label ``y = b`` keeps all its
samples and the other labels are capped so that they are at most ``1 - bias_rate`` of the group.
Files whose names do not parse are reported (a warning listing them), never silently dropped.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .images import IMAGENET, STORE_HELP, ImageStoreKind, open_store

NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg(\.chip\.jpg)?$")  # ages 0-999 (UTKFace's: 1-116)
RACES = ("White", "Black", "Asian", "Indian", "Others")


class UTKFaceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description="folder of age_gender_race_date.jpg files")
    image_size: int = Field(200, ge=8)
    image_store: ImageStoreKind = Field("auto", description=STORE_HELP)
    race_groups: Literal["binary", "all"] = "binary"
    age_groups: Literal["study", "bins"] = "study"
    age_bins: list[int] = Field(default_factory=lambda: [20, 40, 60], description="bin edges when age_groups is 'bins'")
    bias_attribute: Literal["race", "age"] | None = Field(None, description="bias the training split on this attribute")
    bias_target: Literal["gender"] = "gender"
    bias_rate: float = Field(0.9, gt=0.5, lt=1)
    seed: int = 0


def parse_names(names: list[str]) -> tuple[list[str], torch.Tensor, list[str]]:
    """Image names, their (age, gender, race) rows, and the names that do not parse."""
    files, rows, malformed = [], [], []
    for name in names:
        match = NAME.match(name.rsplit("/", 1)[-1])
        if match is None:
            malformed.append(name)
            continue
        files.append(name)
        rows.append([int(match.group(1)), int(match.group(2)), int(match.group(3))])
    return files, torch.tensor(rows, dtype=torch.long).reshape(-1, 3), malformed


class UTKFace(DatasetBuilder):
    """UTKFace faces with age, gender and race from the file names."""

    Params = UTKFaceParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "gender"
    default_sensitive = ("race",)
    description = "UTKFace (folder of age_gender_race_date.jpg): gender, race, age"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, *IMAGENET)

    def _attributes(self, table: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, tuple[str, ...]]]:
        p = self.params
        age, gender, race = table.unbind(1)
        keep = torch.ones(len(table), dtype=torch.bool)
        if p.race_groups == "binary":
            race, race_names = (race != 0).long(), ("White", "Others")
        else:
            race_names = RACES
        if p.age_groups == "study":
            keep &= (age >= 20) | (age <= 10)
            age, age_names = (age <= 10).long(), ("adult", "child")
        else:
            edges = torch.tensor(p.age_bins)
            age = torch.bucketize(age, edges, right=True)
            bounds = [0, *p.age_bins]
            age_names = tuple(f"{lo}-{hi - 1}" for lo, hi in zip(bounds, bounds[1:], strict=False)) + (f"{bounds[-1]}+",)
        attributes = {"gender": gender, "race": race, "age": age}
        values = {"gender": ("Male", "Female"), "race": race_names, "age": age_names}
        return keep, attributes, values

    def read_split(self, split: str) -> SplitData:
        p = self.params
        root = p.root
        store = open_store(root, root.with_suffix(".zip"), p.image_store)
        files, table, malformed = parse_names(store.names())
        if malformed:
            warnings.warn(f"UTKFace: {len(malformed)} file(s) in {root} with names not age_gender_race_date.jpg "
                          f"were skipped: {', '.join(malformed[:5])}{' ...' if len(malformed) > 5 else ''}", stacklevel=2)
        if not files:
            raise FairError(f"data.params.root: no UTKFace images (age_gender_race_date.jpg) in {root}")
        keep, attributes, values = self._attributes(table)
        generator = torch.Generator().manual_seed(p.seed)
        order = torch.randperm(len(files), generator=generator)
        n_train = int(0.8 * len(files))
        n_val = (len(files) - n_train) // 2
        part = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}[split]
        rows = part[keep[part]].sort().values
        if split == "train" and p.bias_attribute is not None:
            rows = self._bias(rows, attributes[p.bias_target], attributes[p.bias_attribute], generator)
        return SplitData(
            images=store.images([files[i] for i in rows.tolist()], p.image_size),
            attributes={k: v[rows] for k, v in attributes.items()},
            values=values,
        )

    def _bias(self, rows: torch.Tensor, target: torch.Tensor, bias: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kept = []
        for b in torch.unique(bias[rows]).tolist():
            in_group = rows[bias[rows] == b]
            aligned = in_group[target[in_group] == b]
            others = in_group[target[in_group] != b]
            cap = int(aligned.numel() * (1 - self.params.bias_rate) / self.params.bias_rate)
            kept += [aligned, others[torch.randperm(others.numel(), generator=generator)[:cap]]]
        return torch.cat(kept).sort().values
