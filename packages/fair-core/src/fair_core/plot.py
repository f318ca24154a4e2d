"""``fair plot``: the trade-off between two metrics, one point per group of seeds (the mean, with
error bars of one std), the Pareto front highlighted; or (``--groups METRIC``) a per-group metric
as bars, one cluster per group of seeds and one bar per protected group. Which direction is better
comes from each metric's registered :attr:`fair_core.metrics.Metric.higher_is_better`. Needs
matplotlib (the ``plots`` extra); the figure is written atomically, its format from the file's
suffix."""

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
    plt = _pyplot()
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


def per_group_values(group: Group, metric: str) -> dict[str, list[float]]:
    """Protected group name -> the per-group ``metric`` of each run of ``group`` (metrics.json's
    ``groups`` section), in the runs' group order."""
    values: dict[str, list[float]] = {}
    for run in group.runs:
        for row in run.metrics.get("groups", []):
            value = row.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(str(row.get("group")), []).append(float(value))
    return values


def draw_group_bars(groups: Sequence[Group], metric: str = "accuracy", names: str = "fair") -> Any:
    """The figure (matplotlib) of each group's per-protected-group ``metric``: a cluster of bars per
    group of seeds (the mean, error bar one std), one bar per protected group; each bar container
    is labelled with its protected group and its bars' ``gid`` is the run group's label."""
    import statistics

    plt = _pyplot()
    table = [(g, per_group_values(g, metric)) for g in groups]
    protected = list(dict.fromkeys(name for _, values in table for name in values))
    if not protected:
        raise FairError(f"--groups: the runs have no per-group {metric!r} (metrics.json's groups section)")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(table) + 2.5), 5), layout="constrained")
    width = 0.8 / len(protected)
    for j, name in enumerate(protected):
        means, stds = [], []
        for _, values in table:
            v = values.get(name, [])
            means.append(statistics.mean(v) if v else math.nan)
            stds.append(statistics.stdev(v) if len(v) > 1 else 0.0)
        positions = [i + (j - (len(protected) - 1) / 2) * width for i in range(len(table))]
        bars = ax.bar(positions, means, width, yerr=stds, capsize=3, label=name, zorder=3)
        for bar, (g, _) in zip(bars, table, strict=True):
            bar.set_gid(g.label)
    ax.set_xticks(range(len(table)), [f"{_wrapped(g.label)}\n(n={len(g.runs)})" for g, _ in table], fontsize=8)
    direction = "higher" if _direction(metric) else "lower"
    ax.set_ylabel(f"{column_name(metric, names)} ({direction} is better; mean ± std over seeds)")
    ax.set_title(f"{column_name(metric, names)} of each protected group", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    ax.legend(title="group", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def _wrapped(label: str, width: int = 18, lines: int = 3) -> str:
    """``label`` on at most ``lines`` lines of ``width`` characters (cut with an ellipsis)."""
    import textwrap

    parts = textwrap.wrap(label, width, break_on_hyphens=False) or [label]
    if len(parts) > lines:
        parts = [*parts[:lines - 1], parts[lines - 1][:width - 1] + "…"]
    return "\n".join(parts)


def _direction(metric: str) -> bool:
    """Whether higher is better for a per-group metric (named as a registered metric when it is one,
    else by its name: accuracies and rates of correct outcomes up, errors down)."""
    from .plugins import get_registry

    if metric in get_registry().names("metrics"):
        return higher_is_better(metric)
    return not any(word in metric for word in ("error", "fpr", "fnr", "loss"))


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FairError("fair plot needs matplotlib: pip install 'fair-core[plots]'") from None
    return plt


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
