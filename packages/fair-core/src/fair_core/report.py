"""Run results: ``metrics.json`` from evaluation counts, ``predictions.csv``, and the comparison
of several runs (``fair compare``).

A ``metrics.json`` read back (by ``fair compare``, ``from_pretrained``, ``fair push``) is untrusted:
a regular file of at most :data:`MAX_METRICS_BYTES`, JSON, and valid as :class:`MetricsFile` (the
sections and types the tables and model cards read), else one :class:`FairError` line naming it."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from .atomic import write_text
from .data import DataInfo, FairDataset
from .errors import FairError
from .metrics import Metric, bootstrap_confidence_interval, group_accuracy
from .spec import MAX_LIST_ITEMS, MAX_NAME_CHARS, MAX_PATH_CHARS, validation_message
from .untrusted import check_nesting, read_json, size_text

SIZE_KEYS = ("n", "pixels", "identities", "pairs")  # entries of `overall` that count, not measure

# A run's metrics.json is a few KB (per-group and per-class tables: 150 ADE20K classes are ~30 KB);
# 8 MiB leaves a wide margin and keeps parsing the worst 8 MiB of JSON under 1 GB.
MAX_METRICS_BYTES = 8 * 2**20
# Sections nest 3 levels (plus the spec's params): as the spec's bound.
MAX_METRICS_DEPTH = 32
# List items and object entries in all: 10 000 group rows of 20 columns fit; caps the walks over it.
MAX_METRICS_ITEMS = 500_000
# Metrics in one section, rows of one table (groups: the intersections of the sensitive attributes).
MAX_METRIC_ENTRIES = 10_000
# The bootstrap draws bootstrap x groups x classes^2 doubles at once (and the metrics a few
# temporaries of that size): 1 GiB of draws is 1000 replicates of 2 groups x 366 classes.
MAX_BOOTSTRAP_BYTES = 2**30


def number(value: Tensor | float) -> float | None:
    """A metric value for JSON: a float, or ``None`` for nan."""
    value = float(value)
    return None if math.isnan(value) else value


def summarize(
    counts: Tensor,
    info: DataInfo,
    metrics: Sequence[Metric],
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``overall`` / ``groups`` / ``fairness`` / ``intervals`` sections of metrics.json."""
    if bootstrap > 0:
        check_bootstrap_memory(bootstrap, counts.shape[-1], counts.shape[0])
    per_group = group_accuracy(counts)
    sizes = counts.sum((-1, -2))
    result: dict[str, Any] = {"overall": {}, "groups": [], "fairness": {}, "intervals": {}}
    for metric in metrics:
        result["overall" if metric.section == "overall" else "fairness"][metric.name] = number(metric.compute(counts))
        if bootstrap > 0:
            lo, hi = bootstrap_confidence_interval(metric.compute, counts, bootstrap, confidence, seed)
            result["intervals"][metric.name] = [number(lo), number(hi)]
    result["overall"]["n"] = int(sizes.sum())
    for g, name in enumerate(info.group_names):
        result["groups"].append({"group": name, "n": int(sizes[g]), "accuracy": number(per_group[g])})
    if bootstrap > 0:
        result["confidence"] = confidence
        result["bootstrap"] = bootstrap
    return result


def check_bootstrap_memory(bootstrap: int, num_classes: int, num_groups: int) -> None:
    """A :class:`FairError` naming ``eval.bootstrap`` when its replicates of the ``(groups, classes,
    classes)`` counts would take more than :data:`MAX_BOOTSTRAP_BYTES`: callable as soon as the data
    is known, before training, so a run never fails for it after training."""
    cells = num_groups * num_classes * num_classes
    needed = bootstrap * cells * 8
    if needed > MAX_BOOTSTRAP_BYTES:
        most = MAX_BOOTSTRAP_BYTES // (cells * 8)
        raise FairError(f"eval.bootstrap: {bootstrap} replicates of {num_groups} groups x {num_classes}^2 cells take "
                        f"{size_text(needed)}, more than the {size_text(MAX_BOOTSTRAP_BYTES)} of "
                        f"fair_core.report.MAX_BOOTSTRAP_BYTES; use at most {most}, or 0 for no intervals")


def write_predictions(path: Path, dataset: FairDataset, index: Tensor, scores: Tensor) -> None:
    """One row per evaluated sample: split row index, target, sensitive attribute values,
    group index, prediction, and the softmax score of each class."""
    info = dataset.info
    probs = torch.softmax(scores.float(), dim=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "target", *info.sensitive, "group", "prediction", *(f"score_{c}" for c in info.class_names)])
    attributes = dataset.split.attributes
    for row, p, s in zip(index.tolist(), probs.argmax(1).tolist(), probs.tolist(), strict=True):
        sensitive = [info.sensitive_values[a][int(attributes[a][row])] for a in info.sensitive]
        target = int(attributes[info.target][row])
        writer.writerow([row, target, *sensitive, int(dataset.row_groups[row]), p, *(f"{v:.6f}" for v in s)])
    write_text(path, buffer.getvalue())


Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
Value = float | None  # strict float takes ints; JSON NaN / Infinity are floats too
Row = Annotated[dict[Name, str | Value], Field(max_length=MAX_LIST_ITEMS)]
Metrics = Annotated[dict[Name, Value], Field(max_length=MAX_METRIC_ENTRIES)]


class _Section(BaseModel):
    # strict: written by fair with exactly these types; unknown sections (a task's own) are tolerated
    model_config = ConfigDict(strict=True, extra="ignore")


class _Named(_Section):
    name: Name


class _SpecRef(_Section):
    method: _Named | None = None  # None: an evaluation (fair evaluate), whose model is in `evaluation`
    data: _Named


class _EvaluationRef(_Section):
    model: Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)]
    source: dict[Name, Any] = Field(default_factory=dict, max_length=MAX_LIST_ITEMS)


class _DataRef(_Section):
    dataset: Name | None = None
    split: Name | None = None


class MetricsFile(_Section):
    """What ``metrics.json`` must hold for the tables, ``fair compare`` and the model card."""

    task: Name = "classification"
    spec: _SpecRef
    data: _DataRef = Field(default_factory=_DataRef)
    overall: Metrics
    fairness: Metrics
    groups: list[Row] = Field(min_length=1, max_length=MAX_METRIC_ENTRIES)
    classes: list[Row] | None = Field(None, max_length=MAX_METRIC_ENTRIES)
    intervals: Annotated[dict[Name, Annotated[list[Value], Field(min_length=2, max_length=2)]],
                         Field(max_length=MAX_METRIC_ENTRIES)] = Field(default_factory=dict)
    confidence: float | None = Field(None, gt=0, lt=1)
    evaluation: _EvaluationRef | None = None  # fair evaluate: the model evaluated and its source

    @model_validator(mode="after")
    def _method_or_evaluation(self) -> MetricsFile:
        if self.spec.method is None and self.evaluation is None:
            raise ValueError("spec.method: missing (a trained run names its method, an evaluation its model)")
        return self


def display_label(result: dict[str, Any]) -> str:
    """What produced a result, as tables name it: the method of a trained run, ``evaluated (MODEL)``
    for a ``fair evaluate`` of MODEL."""
    evaluation = result.get("evaluation")
    if isinstance(evaluation, dict) and evaluation.get("model"):
        return f"evaluated ({evaluation['model']})"
    method = (result.get("spec") or {}).get("method")
    return str(method.get("name", "?")) if isinstance(method, dict) else "?"


def read_metrics_file(path: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` at ``path``, checked (bounded, JSON, :class:`MetricsFile`)."""
    path = Path(path)
    metrics = read_json(path, MAX_METRICS_BYTES, "fair_core.report.MAX_METRICS_BYTES", "metrics.json",
                        f"limit {MAX_METRICS_DEPTH} levels, fair_core.report.MAX_METRICS_DEPTH")
    if not isinstance(metrics, dict):
        raise FairError(f"{path}: not a run's metrics (an object with spec, overall, fairness, groups)")
    check_nesting(metrics, MAX_METRICS_DEPTH, "fair_core.report.MAX_METRICS_DEPTH", str(path),
                  MAX_METRICS_ITEMS, "fair_core.report.MAX_METRICS_ITEMS")
    try:
        MetricsFile.model_validate(metrics)
    except ValidationError as exc:
        raise FairError(f"{path}: {validation_message(exc)}") from None
    return metrics


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The checked ``metrics.json`` of the run folder ``run_dir``."""
    path = Path(run_dir) / "metrics.json"
    if not os.path.lexists(path):
        raise FairError(f"{run_dir}: no metrics.json (not a finished run)")
    return read_metrics_file(path)


def comparison_rows(run_dirs: Sequence[str | Path]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per run) of the comparison table: the union of the runs' overall
    and fairness metrics (``-`` where a run has none, e.g. runs of different tasks)."""
    from .run_folder import run_state

    runs = []
    for d in run_dirs:  # only what the table shows is kept of each run
        state = run_state(Path(d))
        if state not in (None, "finished"):  # None: a folder of an older version, without run.json
            raise FairError(f"{d}: the run there is {state}, not finished; its results (if any) are not this run's: "
                            f"compare it once it has finished")
        m = read_metrics(d)
        runs.append((Path(d), {"overall": m["overall"], "fairness": m["fairness"], "task": m.get("task", "classification"),
                               "method": display_label(m), "dataset": m["spec"]["data"]["name"]}))
    keys: dict[tuple[str, str], None] = {}  # insertion-ordered set
    for _, m in runs:
        for section in ("overall", "fairness"):
            for k in m.get(section, {}):
                if k not in SIZE_KEYS:
                    keys.setdefault((section, k))
    header = ["run", "task", "method", "dataset", *(k for _, k in keys)]
    rows = []
    for path, m in runs:
        values = [m.get(s, {}).get(k) for s, k in keys]
        rows.append([
            path.name,
            m.get("task", "classification"),
            m["method"],
            m["dataset"],
            *("-" if v is None else f"{v:.4f}" for v in values),
        ])
    return header, rows
