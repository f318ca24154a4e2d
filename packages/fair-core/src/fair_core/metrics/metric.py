"""The object a ``fair`` plugin registers for a metric (``fair_register_metrics``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Metric:
    """A named metric of one task, computed from that task's evaluation state.

    * ``compute`` maps the state the task gathers to a number (a 0-d tensor or a float):
      classification passes the group confusion counts ``(G, C, C)``, segmentation the pixel
      confusion per group ``(G, K, K)``, verification an
      :class:`~fair_core.tasks.verification.EmbeddingSet`.
    * ``section`` says where ``metrics.json`` reports it: ``overall`` or ``fairness`` for a
      number; ``groups`` or ``classes`` for one value per protected group or per class, reported
      as the column ``column`` (default: the name) of the per-group or per-class rows.
    * ``task`` is the name of the task it belongs to; a run computes the metrics of its task only.
    """

    name: str
    compute: Callable[[Any], Tensor | float]
    section: str = "fairness"
    higher_is_better: bool = False
    description: str = ""
    task: str = "classification"
    column: str | None = None
