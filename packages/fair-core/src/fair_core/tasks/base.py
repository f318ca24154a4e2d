"""The task seam: what differs between classification, face verification and segmentation.

The runner (:mod:`fair_core.runner`) is one loop for every task. A :class:`Task` owns only what
differs between tasks:

* the batch its datasets yield (:attr:`Task.dataset_class`) and how items are collated;
* the default loss that ``erm`` (the base :class:`~fair_core.Method`) trains with;
* what evaluation gathers across processes, exactly once per sample (an :class:`Evaluation`);
* the sections of ``metrics.json`` built from the registered metrics of the task, the per-sample
  output file, the console tables and the model card's tables;
* the model class :func:`fair_core.from_pretrained` returns for it.

Tasks are plugins (``fair_register_tasks``); core registers classification, verification and
segmentation. A spec names its task (``"task": "segmentation"``) or takes the dataset's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel
from rich.table import Table
from torch import Tensor, nn

from ..data import DataInfo, FairDataset, NoParams
from ..metrics import Metric
from ..report import SIZE_KEYS, number

if TYPE_CHECKING:
    from ..hub import FairModel
    from ..method import Method



def collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Stack every field of a list of items into a batch."""
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0]}


class Evaluation(ABC):
    """What evaluation gathers across processes, torchmetrics-style.

    Each process calls :meth:`outputs` on its batches; the runner gathers the returned per-sample
    tensors with ``accelerator.gather_for_metrics`` (padding duplicates dropped) and passes them
    to :meth:`update` on every process; :meth:`state` is what the task's metrics compute on."""

    def __init__(self, task: Task, dataset: FairDataset):
        self.task, self.dataset = task, dataset

    @abstractmethod
    def outputs(self, method: Method, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """Per-sample tensors of one batch, each with the batch size as first dimension."""

    @abstractmethod
    def update(self, gathered: tuple[Tensor, ...]) -> None:
        """Add the gathered outputs of one batch (all processes) to the state."""

    @abstractmethod
    def state(self) -> Any:
        """The state the task's metrics compute on."""


class Task(ABC):
    """Base class of tasks. Subclasses set ``name``, ``description``, ``dataset_class``,
    ``model_class`` and implement :meth:`loss`, :meth:`evaluation` and :meth:`summarize`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    EvalParams: ClassVar[type[BaseModel]] = NoParams  # checked against the spec's eval.params
    dataset_class: ClassVar[type[FairDataset]] = FairDataset
    pipeline_tag: ClassVar[str] = ""  # the Hugging Face Hub task of its models
    model_noun: ClassVar[str] = "model"  # how a model card names its models ("image classifier")
    model_class: ClassVar[type[FairModel]]  # what from_pretrained returns
    open_set: ClassVar[bool] = False  # True: evaluation data may hold other classes than training (new identities)

    def __init__(self, eval_params: BaseModel | None = None):
        self.eval_params = eval_params if eval_params is not None else self.EvalParams()

    # ------------------------------------------------------------------ training
    def collate(self, items: list[dict[str, Any]], info: DataInfo) -> dict[str, Tensor]:
        """A batch of the items of a dataset described by ``info`` (default: every field stacked)."""
        return collate(items)

    @abstractmethod
    def loss(self, outputs: Tensor, batch: dict[str, Tensor], info: DataInfo) -> Tensor:
        """The default loss of the task (what ``erm`` minimises) on the model's outputs."""

    def model_config(self, info: DataInfo) -> dict[str, Any]:
        """Entries the task adds to a model's ``config.json`` (read back by its model class)."""
        return {}

    # ------------------------------------------------------------------ evaluation
    @abstractmethod
    def evaluation(self, dataset: FairDataset) -> Evaluation:
        """A fresh evaluation state for ``dataset``."""

    @abstractmethod
    def summarize(self, evaluation: Evaluation, metrics: Sequence[Metric], eval_spec: Any, seed: int) -> dict[str, Any]:
        """The metric sections of ``metrics.json`` (``overall``, ``fairness``, ``groups``, ...)."""

    def data_section(self, train_info: DataInfo, eval_info: DataInfo, split: str) -> dict[str, Any]:
        """What ``metrics.json`` says of the data."""
        return {"dataset": eval_info.dataset, "split": split, "target": eval_info.target,
                "sensitive": list(eval_info.sensitive), "classes": list(train_info.class_names),
                "groups": list(eval_info.group_names)}

    def write_outputs(self, directory: Path, evaluation: Evaluation) -> None:
        """The per-sample output file of the run (none by default)."""
        return None

    # ------------------------------------------------------------------ reports
    def console_tables(self, result: dict[str, Any]) -> list[Table]:
        """The tables ``fair run`` prints: the per-group (and per-class) table, then the metrics."""
        title = f"{result['spec']['method']['name']} on {result['data']['dataset']} ({result['data']['split']})"
        tables = [rows_table(f"{title}: by group", result.get("groups", []), "group")]
        if result.get("classes"):
            tables.append(rows_table("by class", result["classes"], "class"))
        tables.append(metrics_table(result))
        return tables

    def card_target(self, data: dict[str, Any]) -> str:
        """What the model card says the model predicts (after "trained ... on DATASET")."""
        return ""

    def card_lines(self, metrics: dict[str, Any]) -> list[str]:
        """Markdown of the model card's evaluation section."""
        lines = metrics_markdown(metrics)
        for key, title in (("groups", "By group"), ("classes", "By class")):
            if metrics.get(key):
                lines += ["", f"### {title}", "", *rows_markdown(metrics[key])]
        return lines

    def usage_lines(self, repo_id: str, config: dict[str, Any]) -> list[str]:
        """The Python lines of the model card's "Use" section."""
        return ["from fair_core import from_pretrained", "", f'model = from_pretrained("{repo_id}")']


# --------------------------------------------------------------------------- shared summaries
def metric_sections(state: Any, metrics: Sequence[Metric]) -> dict[str, Any]:
    """``overall`` and ``fairness`` values, and the per-group / per-class columns, of the
    ``metrics`` on ``state``. A metric of section ``groups`` (``classes``) returns one value per
    group (class); its column in the rows is ``metric.column`` or its name."""
    result: dict[str, Any] = {"overall": {}, "fairness": {}, "group_columns": {}, "class_columns": {}}
    for metric in metrics:
        value = metric.compute(state)
        if metric.section in ("overall", "fairness"):
            result[metric.section][metric.name] = number(value)
        else:
            key = "group_columns" if metric.section == "groups" else "class_columns"
            result[key][metric.column or metric.name] = [number(v) for v in torch.as_tensor(value).reshape(-1).tolist()]
    return result


def table_rows(key: str, names: Sequence[str], base: dict[str, Sequence[Any]], columns: dict[str, list]) -> list[dict[str, Any]]:
    """Rows ``{key: name, **base, **columns}``, one per name."""
    return [{key: name, **{k: v[i] for k, v in base.items()}, **{k: v[i] for k, v in columns.items()}}
            for i, name in enumerate(names)]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def rows_table(title: str, rows: list[dict[str, Any]], key: str) -> Table:
    table = Table(title=title)
    columns = list(rows[0]) if rows else [key]
    for column in columns:
        table.add_column(column, justify="left" if column == key else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    return table


def metrics_table(result: dict[str, Any]) -> Table:
    summary = Table(title="overall and fairness")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    intervals = result.get("intervals", {})
    if intervals:
        summary.add_column(f"{int(result.get('confidence', 0.95) * 100)}% CI", justify="right")
    for section in ("overall", "fairness"):
        for name, value in result.get(section, {}).items():
            if name in SIZE_KEYS:
                continue
            ci = intervals.get(name)
            cells = [name, _fmt(value)] + ([f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""] if intervals else [])
            summary.add_row(*cells)
    return summary


def metrics_markdown(metrics: dict[str, Any]) -> list[str]:
    intervals = metrics.get("intervals", {})
    confidence = metrics.get("confidence")
    header = "| metric | value |" + (f" {round(confidence * 100)}% CI |" if intervals and confidence else "")
    lines = [header, "|---|---:|" + ("---:|" if intervals and confidence else "")]
    for section in ("overall", "fairness"):
        for name, value in metrics.get(section, {}).items():
            if name in SIZE_KEYS:
                continue
            ci = intervals.get(name)
            lines.append(f"| {name} | {_fmt(value)} |" + (f" {f'[{_fmt(ci[0])}, {_fmt(ci[1])}]' if ci else ''} |"
                                                        if intervals and confidence else ""))
    return lines


def rows_markdown(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(rows[0])
    return ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1),
            *("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows)]
