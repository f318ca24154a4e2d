"""Run results: ``metrics.json`` from evaluation counts, ``predictions.csv``, and the comparison
of several runs (``fair compare``)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import write_text
from .data import DataInfo, FairDataset
from .errors import FairError
from .metrics import Metric, bootstrap_confidence_interval, group_accuracy

SIZE_KEYS = ("n", "pixels", "identities", "pairs")  # entries of `overall` that count, not measure


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


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FairError(f"{run_dir}: no metrics.json (not a finished run)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FairError(f"{path}: unreadable metrics.json: {exc.msg}") from None


def comparison_rows(run_dirs: Sequence[str | Path]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per run) of the comparison table: the union of the runs' overall
    and fairness metrics (``-`` where a run has none, e.g. runs of different tasks)."""
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    keys: list[tuple[str, str]] = []
    for _, m in runs:
        for section in ("overall", "fairness"):
            for k in m.get(section, {}):
                if k not in SIZE_KEYS and (section, k) not in keys:
                    keys.append((section, k))
    header = ["run", "task", "method", "dataset", *(k for _, k in keys)]
    rows = []
    for path, m in runs:
        spec = m.get("spec", {})
        values = [m.get(s, {}).get(k) for s, k in keys]
        rows.append([
            path.name,
            m.get("task", "classification"),
            spec.get("method", {}).get("name", "?"),
            spec.get("data", {}).get("name", "?"),
            *("-" if v is None else f"{v:.4f}" for v in values),
        ])
    return header, rows
