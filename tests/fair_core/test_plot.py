"""fair plot: the drawn points are the aggregated means; the Pareto front follows each metric's direction."""

import pytest
from test_aggregate import seed_runs

from fair_core.aggregate import aggregate, read_runs
from fair_core.plot import draw_tradeoff, pareto_front, write_plot

pytest.importorskip("matplotlib")


def test_points_are_the_means(tmp_path_factory, tmp_path):
    runs = seed_runs(tmp_path_factory.mktemp("seeds"))
    result = aggregate(read_runs(runs), ["accuracy", "eod"])
    fig = draw_tradeoff(result.groups, "accuracy", "eod")
    ax = fig.axes[0]
    drawn = {c.lines[0].get_gid(): tuple(c.lines[0].get_xydata()[0]) for c in ax.containers}
    assert drawn == {g.label: pytest.approx((g.stats["accuracy"].mean, g.stats["eod"].mean)) for g in result.groups}
    assert "higher is better" in ax.get_xlabel() and "lower is better" in ax.get_ylabel()
    path = write_plot(fig, tmp_path / "tradeoff.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_pareto_front_directions():
    points = [(0.9, 0.3), (0.8, 0.1), (0.7, 0.2), (0.95, 0.5)]
    assert pareto_front(points, x_higher=True, y_higher=False) == [0, 1, 3]  # (0.7, 0.2) is dominated by (0.8, 0.1)
    assert pareto_front(points, x_higher=True, y_higher=True) == [3]


def test_group_bars_are_the_per_group_means_over_seeds(tmp_path_factory, tmp_path):
    import json

    import numpy as np

    from fair_core.aggregate import group_runs
    from fair_core.plot import draw_group_bars

    runs = seed_runs(tmp_path_factory.mktemp("seeds"))
    fig = draw_group_bars(group_runs(read_runs(runs)), "accuracy")
    ax = fig.axes[0]
    for container in ax.containers:
        if not hasattr(container, "patches"):
            continue
        group = container.get_label()
        for bar in container.patches:
            method = bar.get_gid()
            by_hand = [row["accuracy"] for f in runs if f.name.startswith(f"{method}-")
                       for row in json.loads((f / "metrics.json").read_text())["groups"] if row["group"] == group]
            assert len(by_hand) == 3 and bar.get_height() == pytest.approx(np.mean(by_hand), abs=1e-12)
    drawn = {(c.get_label(), b.get_gid()) for c in ax.containers if hasattr(c, "patches") for b in c.patches}
    assert len(drawn) == 4  # 2 methods x 2 protected groups
    assert "higher is better" in ax.get_ylabel()
    assert write_plot(fig, tmp_path / "groups.svg").read_text().lstrip().startswith("<?xml")


def test_plot_needs_a_tradeoff_or_groups(tmp_path_factory):
    import subprocess
    import sys

    runs = seed_runs(tmp_path_factory.mktemp("seeds"))
    done = subprocess.run([sys.executable, "-m", "fair_core.cli", "plot", str(runs[0]), "--x", "accuracy"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "give --x and --y" in done.stderr and len(done.stderr.strip().splitlines()) == 1
