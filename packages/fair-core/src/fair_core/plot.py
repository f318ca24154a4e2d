"""``fair plot``: the trade-off between two metrics, one point per group of seeds (the mean, with
error bars of one std), the Pareto front highlighted. Which direction is better comes from each
metric's registered :attr:`fair_core.metrics.Metric.higher_is_better`. Needs matplotlib (the
``plots`` extra); the figure is written atomically, its format from the file's suffix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .aggregate import Group, column_name
from .atomic import atomic_path
from .errors import FairError

FORMATS = ("png", "pdf", "svg")


def higher_is_better(metric: str) -> bool:
    """The registered direction of ``metric`` (a FairError for an unknown one)."""
    from .plugins import get_registry

    registry = get_registry()
    if metric not in registry.names("metrics"):
        raise FairError(f"--x/--y: unknown metric {metric!r}; metrics: {', '.join(registry.names('metrics'))}")
    return bool(registry.get("metrics", metric).obj.higher_is_better)


def pareto_front(points: Sequence[tuple[float, float]], x_higher: bool, y_higher: bool) -> list[int]:
    """Indices of the points no other point dominates (at least as good on both, better on one)."""
    sx, sy = (1 if x_higher else -1), (1 if y_higher else -1)
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(sx * a >= sx * x and sy * b >= sy * y and (sx * a > sx * x or sy * b > sy * y)
                        for j, (a, b) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def draw_tradeoff(groups: Sequence[Group], x: str, y: str, names: str = "fair") -> Any:
    """The figure (matplotlib) of ``groups``' means of ``x`` and ``y``; the points are the first
    line of each errorbar container, labelled with the group (``gid`` = the label)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FairError("fair plot needs matplotlib: pip install 'fair-core[plots]'") from None
    x_up, y_up = higher_is_better(x), higher_is_better(y)
    shown = []
    for g in groups:
        sx, sy = g.stats.get(x), g.stats.get(y)
        if sx is None or sy is None:
            raise FairError(f"--x/--y: the runs have no metric {x if sx is None else y}")
        if math.isnan(sx.mean) or math.isnan(sy.mean):
            continue
        shown.append((g, sx, sy))
    if not shown:
        raise FairError(f"no run has both {x} and {y}")
    points = [(sx.mean, sy.mean) for _, sx, sy in shown]
    front = set(pareto_front(points, x_up, y_up))
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (g, sx, sy) in enumerate(shown):
        on_front = i in front
        container = ax.errorbar(sx.mean, sy.mean, xerr=None if math.isnan(sx.std) else sx.std,
                                yerr=None if math.isnan(sy.std) else sy.std, fmt="o", color=colors[i % len(colors)],
                                markersize=9 if on_front else 6, capsize=3, markeredgecolor="black" if on_front else "none",
                                markeredgewidth=1.5, label=f"{g.label} (n={sx.n})", zorder=3)
        container.lines[0].set_gid(g.label)
    ordered = sorted(front, key=lambda i: points[i][0])
    if len(ordered) > 1:
        ax.plot([points[i][0] for i in ordered], [points[i][1] for i in ordered], "--", color="black", lw=1,
                zorder=2, label="Pareto front")
    _label_points(ax, [g.label for g, _, _ in shown], points)
    arrow = {True: "higher is better →", False: "lower is better →"}
    ax.set_xlabel(f"{column_name(x, names)} ({arrow[x_up].replace(' →', '')}; mean ± std over seeds)")
    ax.set_ylabel(f"{column_name(y, names)} ({arrow[y_up].replace(' →', '')}; mean ± std over seeds)")
    ax.set_title(f"{column_name(y, names)} vs {column_name(x, names)}: best corner "
                 f"{'top' if y_up else 'bottom'}-{'right' if x_up else 'left'}; ringed points: Pareto front", fontsize=10)
    ax.margins(0.12)  # room for the labels beside the outermost points
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _label_points(ax: Any, labels: Sequence[str], points: Sequence[tuple[float, float]]) -> None:
    """Text beside each point, nudged down in steps while it would sit on an earlier label (in
    axes fractions, so the nudge is the same on any scale)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for label, (x, y) in zip(labels, points, strict=True):
        fx, fy = (x - min(xs)) / span_x, (y - min(ys)) / span_y
        offset = 0
        while any(abs(fx - px) < 0.25 and abs(fy + offset - py) < 0.06 for px, py in placed) and offset > -1:
            offset -= 0.07
        placed.append((fx, fy + offset))
        ax.annotate(label, (x, y), xytext=(8, 8 + offset * 5 / 0.07 * 2.4), textcoords="offset points", fontsize=8,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "gray"} if offset else None)


def write_plot(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise FairError(f"--output: {path.name}: the figure format comes from the suffix: .png, .pdf or .svg")
    from matplotlib import rc_context

    with atomic_path(path) as tmp, rc_context({"svg.fonttype": "none"}):
        fig.savefig(tmp, format=suffix, dpi=130)
    return path
