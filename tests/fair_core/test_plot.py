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
