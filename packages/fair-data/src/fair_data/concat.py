"""Several registered datasets as one, split by split: real data plus synthetic or edited images
(VLBC's augmentation: fine-tune on real + attribute-edited faces).

``datasets`` lists two or more parts, each an ordinary dataset spec ``{"name", "params"}``,
looked up through fair-core's plugin registry (any installed dataset, as ``data.name`` is).
The training split(s) (``train_splits``, default ``train``) are the concatenation of every
part's split of that name, in the order of ``datasets``; a part without that split contributes
nothing to it (edited images usually have only ``train``). Evaluation splits (every other
split) come from the FIRST part only (``eval_from: "first"``, the default), so synthetic images
never leak into validation or test; ``eval_from: "all"`` concatenates them too.

The parts must agree on what a model sees and predicts: the tasks they serve, the image size
and normalisation (:meth:`~fair_core.DatasetBuilder.preprocessing`), and, in every split read
from several parts, the attribute names and the value names of every attribute (and, for
segmentation, the mask classes). A difference is refused with one line naming the two parts and
what differs. Images stay lazy (each part's own reader); the FIRST part's transforms
(augmentation and normalisation) apply to every image, and its default target and protected
attribute are the concatenation's. Verification is not offered: the identities of two datasets
are not one label space.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData
from fair_core.plugins import get_registry
from fair_core.spec import validate_params

FIELD = "data.params.datasets"


class PartSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="registered dataset name (see `fair list`)")
    params: dict[str, Any] = Field(default_factory=dict, description="the dataset's own parameters")


class ConcatParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    datasets: list[PartSpec] = Field(min_length=2, max_length=64,
                                     description="the parts, in order; the first is the real data evaluation reads")
    eval_from: Literal["first", "all"] = Field(
        "first", description="evaluation splits (every split but train_splits) from the first part only, or from all")
    train_splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1,
                                    description="the splits concatenated from every part whatever eval_from says")


class ConcatSequence:
    """``items[i]`` of several sequences one after the other (lazy; picklable for loader workers)."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        part = bisect.bisect_right(self.starts, i) - 1
        return self.parts[part][i - self.starts[part]]


def _list(names: Sequence[str]) -> str:
    return ", ".join(names) or "none"


class Concat(DatasetBuilder):
    """Registered datasets concatenated split by split; evaluation from the first by default."""

    Params = ConcatParams
    description = "datasets concatenated split by split (real + synthetic/edited training images); eval from the first"

    def __init__(self, params: ConcatParams, name: str = ""):
        super().__init__(params, name or "concat")
        registry = get_registry()
        self.parts: list[DatasetBuilder] = []
        self.labels: list[str] = []
        for i, part in enumerate(params.datasets):
            entry = registry.get("datasets", part.name, f"{FIELD}.{i}.name")
            self.parts.append(entry.obj(validate_params(entry.obj.Params, part.params, f"{FIELD}.{i}.params"), part.name))
            self.labels.append(f"{i} ({part.name})")
        first = self.parts[0]
        self.tasks = tuple(t for t in first.tasks if t != "verification" and all(t in p.tasks for p in self.parts))
        if not self.tasks:
            raise FairError(f"{FIELD}: the parts serve no task in common ("
                            + "; ".join(f"{label}: {_list(p.tasks)}" for label, p in zip(self.labels, self.parts, strict=True))
                            + "); verification is not offered, as two datasets' identities are not one label space")
        reference = first.preprocessing()
        for label, part in zip(self.labels[1:], self.parts[1:], strict=True):
            other = part.preprocessing()
            self._agree("image size", self.labels[0], label, reference.image_size, other.image_size)
            self._agree("normalisation mean", self.labels[0], label, _numbers(reference.mean), _numbers(other.mean))
            self._agree("normalisation std", self.labels[0], label, _numbers(reference.std), _numbers(other.std))

    def _agree(self, what: str, a: str, b: str, value_a: Any, value_b: Any) -> None:
        if value_a != value_b:
            raise FairError(f"{FIELD}: parts {a} and {b} differ in {what}: {value_a} vs {value_b}")

    def _contributing(self, split: str) -> list[int]:
        """The parts whose ``split`` this dataset's ``split`` concatenates."""
        if self.params.eval_from == "first" and split not in self.params.train_splits:
            return [0] if split in self.parts[0].splits else []
        return [i for i, part in enumerate(self.parts) if split in part.splits]

    @property
    def splits(self) -> tuple[str, ...]:  # type: ignore[override]
        names: list[str] = []
        for part in self.parts:
            names += [s for s in part.splits if s not in names]
        return tuple(s for s in names if self._contributing(s))

    @property
    def default_target(self) -> str | None:  # type: ignore[override]
        return self.parts[0].default_target

    @property
    def default_sensitive(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.parts[0].default_sensitive)

    def preprocessing(self) -> Preprocessing:
        return self.parts[0].preprocessing()

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        return self.parts[0].train_transform()

    def eval_transform(self) -> Callable[[Tensor], Tensor] | None:
        return self.parts[0].eval_transform()

    def pair_transform(self, train: bool):
        return self.parts[0].pair_transform(train)

    def read_split(self, split: str) -> SplitData:
        chosen = self._contributing(split)
        if not chosen:
            raise FairError(f"data split: unknown split {split!r} for {self.name}; available: {', '.join(self.splits)}")
        data = [self.parts[i].read_split(split) for i in chosen]
        if len(data) == 1:
            return data[0]
        first, a = data[0], self.labels[chosen[0]]
        for i, other in zip(chosen[1:], data[1:], strict=True):
            b = self.labels[i]
            self._agree(f"attribute names (split {split})", a, b, _list(sorted(first.attributes)), _list(sorted(other.attributes)))
            for attribute, names in first.values.items():
                self._agree(f"the value names of {attribute!r}", a, b, _list(names), _list(other.values[attribute]))
            self._agree("masks (segmentation data or not)", a, b, first.masks is not None, other.masks is not None)
            self._agree("mask classes", a, b, _list(first.mask_classes), _list(other.mask_classes))
            self._agree("the ignore index of masks", a, b, first.ignore_index, other.ignore_index)
            if other.pairs is not None or first.pairs is not None:
                raise FairError(f"{FIELD}: parts {a} and {b} give verification pairs; concat does not join pair lists")
        return SplitData(
            images=ConcatSequence([d.images for d in data]),
            attributes={name: torch.cat([d.attributes[name].long() for d in data]) for name in first.attributes},
            values=dict(first.values),
            masks=ConcatSequence([d.masks for d in data]) if first.masks is not None else None,
            mask_classes=first.mask_classes,
            ignore_index=first.ignore_index,
        )



def _numbers(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
