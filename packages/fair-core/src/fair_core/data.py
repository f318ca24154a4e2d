"""Datasets: the interface a ``fair`` dataset plugin implements, and the split object runs use.

A dataset plugin (a :class:`DatasetBuilder` subclass) only says how to read a split: its images
and a table of categorical attributes (``{"shape": tensor, "color": tensor}`` with the value names
of each). Core turns a split into a :class:`FairDataset` for a chosen target attribute and
sensitive attribute(s); several sensitive attributes give intersectional groups. Attribute names
are checked here, once, for every dataset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor
from torch.utils.data import Dataset

from .errors import FairError
from .metrics import intersect_groups

if TYPE_CHECKING:
    from .tasks import Task


class NoParams(BaseModel):
    """Parameters of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Preprocessing:
    """What a deployed model needs to prepare an image: size and normalisation."""

    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def normalize(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
        return (images - mean) / std


@dataclass
class SplitData:
    """One split as a plugin reads it: ``images[i]`` gives a float ``(3, H, W)`` tensor in [0, 1];
    ``attributes[name]`` holds integer codes, ``values[name]`` their names.

    Segmentation datasets also give ``masks[i]``, an integer ``(H, W)`` tensor of class indices
    into ``mask_classes`` with ``ignore_index`` for unlabelled pixels. Verification datasets may
    give ``pairs``, their own pair list as ``(P, 3)`` integer rows ``(row_a, row_b, same)``."""

    images: Any
    attributes: dict[str, Tensor]
    values: dict[str, tuple[str, ...]]
    masks: Any = None
    mask_classes: tuple[str, ...] = ()
    ignore_index: int = 255
    pairs: Any = None


@dataclass(frozen=True)
class DataInfo:
    """What a model and a report need to know about the data of a run."""

    dataset: str
    target: str
    sensitive: tuple[str, ...]
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]
    sensitive_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    preprocessing: Preprocessing = Preprocessing(32)
    ignore_index: int = 255  # segmentation: the mask value of unlabelled pixels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)


class FairDataset(Dataset):
    """A split seen through one target and one (intersectional) sensitive attribute.

    Items are dicts ``{"image", "target", "group", "index"}``; ``index`` is the row in the
    split, so predictions can be joined back to the attribute table. ``select`` makes a view on
    a list of rows (repeats allowed), which is how pre-processing methods resample. Tasks whose
    batches differ subclass it (the verification task names the target ``identity``; the
    segmentation task adds the mask).
    """

    target_key: ClassVar[str] = "target"

    def __init__(
        self,
        split: SplitData,
        info: DataInfo,
        transform: Callable[[Tensor], Tensor] | None = None,
        rows: Tensor | None = None,
    ):
        self.split, self.info, self.transform = split, info, transform
        n = len(next(iter(split.attributes.values())))
        self.rows = torch.arange(n) if rows is None else rows.long()
        all_targets = split.attributes[info.target].long()
        sizes = [len(split.values[a]) for a in info.sensitive]
        self.row_groups = intersect_groups(torch.stack([split.attributes[a].long() for a in info.sensitive], 1), sizes)
        self.targets = all_targets[self.rows]
        self.groups = self.row_groups[self.rows]  # row_groups: the group of every split row

    @classmethod
    def describe(cls, data: SplitData, dataset: str, target: str | None, sensitive: Sequence[str],
                 preprocessing: Preprocessing) -> DataInfo:
        """Check the attribute names of a split and say what a run needs to know about it."""
        if target is None:
            raise FairError(f"data.target: {dataset} has no default target; choose one of: {', '.join(sorted(data.attributes))}")
        for field_name, attribute in [("data.target", target)] + [("data.sensitive", a) for a in sensitive]:
            if attribute not in data.attributes:
                available = ", ".join(sorted(data.attributes))
                raise FairError(f"{field_name}: unknown attribute {attribute!r} for {dataset}; available: {available}")
        if target in sensitive:
            raise FairError(f"data.sensitive: {target!r} is the target; pick another protected attribute")
        return DataInfo(
            dataset=dataset,
            target=target,
            sensitive=tuple(sensitive),
            class_names=tuple(data.values[target]),
            group_names=group_names(data.values, sensitive),
            sensitive_values={a: tuple(data.values[a]) for a in sensitive},
            preprocessing=preprocessing,
        )

    @classmethod
    def from_split(cls, split: SplitData, info: DataInfo, builder: DatasetBuilder, train: bool) -> FairDataset:
        """The dataset of a split with the builder's training or evaluation transform."""
        return cls(split, info, builder.train_transform() if train else builder.eval_transform())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        image = self.split.images[row]
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, self.target_key: self.targets[i], "group": self.groups[i], "index": row}

    def _view(self, rows: Tensor, transform: Callable[[Tensor], Tensor] | None) -> FairDataset:
        return type(self)(self.split, self.info, transform, rows)

    def select(self, positions: Tensor | Sequence[int]) -> FairDataset:
        """A view on ``positions`` of this dataset (repeats allowed)."""
        positions = torch.as_tensor(positions, dtype=torch.long)
        return self._view(self.rows[positions], self.transform)

    def with_transform(self, transform: Callable[[Tensor], Tensor] | None) -> FairDataset:
        return self._view(self.rows, transform)

    def attribute_names(self, row: int) -> dict[str, str]:
        """Value names of every attribute of a split row (for reports and predictions.csv)."""
        return {a: self.split.values[a][int(codes[row])] for a, codes in self.split.attributes.items()}

    def count_table(self) -> tuple[str, tuple[str, ...], Tensor]:
        """What ``fair data check`` shows: (row label, row names, counts ``(rows, groups)``)."""
        return self.info.target, self.info.class_names, self.cell_counts()

    def cell_counts(self) -> Tensor:
        """``counts[y, g]``: samples of each (target, group) cell."""
        cell = self.targets * self.info.num_groups + self.groups
        counts = torch.bincount(cell, minlength=self.info.num_classes * self.info.num_groups)
        return counts.reshape(self.info.num_classes, self.info.num_groups)


def group_names(values: dict[str, tuple[str, ...]], sensitive: Sequence[str]) -> tuple[str, ...]:
    """Names of intersectional groups, in the order of :func:`fair_core.metrics.intersect_groups`."""
    names: list[str] = [""]
    for attribute in sensitive:
        names = [f"{prefix}/{v}" if prefix else v for prefix in names for v in values[attribute]]
    return tuple(names)


class DatasetBuilder(ABC):
    """Base class of dataset plugins.

    Subclasses set ``Params`` (a pydantic model, ``extra="forbid"``), ``splits``, the default
    ``target`` and ``sensitive`` attribute names, the ``tasks`` the data serves (the first is
    the default of a spec that names none), and implement :meth:`read_split`.
    """

    Params: ClassVar[type[BaseModel]] = NoParams
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    default_target: ClassVar[str | None] = None
    default_sensitive: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    description: ClassVar[str] = ""

    def __init__(self, params: BaseModel, name: str = ""):
        self.params, self.name = params, name or type(self).__name__.lower()

    @abstractmethod
    def read_split(self, split: str) -> SplitData:
        """Read one split: images and the attribute table."""

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(32)

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        """Augmentation + normalisation for training; defaults to :meth:`eval_transform`."""
        return self.eval_transform()

    def eval_transform(self) -> Callable[[Tensor], Tensor] | None:
        return self.preprocessing().normalize

    def pair_transform(self, train: bool) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
        """Segmentation: a transform of ``(image, mask)`` together (crops, flips, resizing), run
        before :meth:`train_transform` / :meth:`eval_transform`; none by default."""
        return None

    def load(self, split: str, target: str | None, sensitive: Sequence[str] | None, train: bool = False,
             task: Task | None = None) -> FairDataset:
        """Read ``split`` and view it through ``target`` and ``sensitive`` (defaults if None), as
        the dataset of ``task`` (classification when omitted)."""
        if split not in self.splits:
            raise FairError(f"data split: unknown split {split!r} for {self.name}; available: {', '.join(self.splits)}")
        dataset_class = task.dataset_class if task is not None else FairDataset
        data = self.read_split(split)
        info = dataset_class.describe(data, self.name, target or self.default_target,
                                      tuple(sensitive or self.default_sensitive), self.preprocessing())
        return dataset_class.from_split(data, info, self, train)
