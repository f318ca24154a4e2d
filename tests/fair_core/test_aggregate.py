"""fair compare over seeds: statistics against numbers computed from the runs' metrics.json."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from conftest import small_spec
from fair_core import FairError
from fair_core.aggregate import aggregate, holm, read_runs, render
from fair_core.cli import app

TINY = {"params": {"train_size": 128, "val_size": 16, "test_size": 48, "image_size": 16}}
METRICS = ["accuracy", "worst_group_accuracy", "eod"]
_RUNS: dict[str, list[Path]] = {}


def seed_runs(root: Path) -> list[Path]:
    """erm and uw, 3 seeds each, 1 epoch on tiny data (run in this process, once per session)."""
    from fair_core.runner import run
    from fair_core.spec import parse_spec

    if "runs" not in _RUNS:
        folders = []
        for method in ("erm", "uw"):
            for seed in range(3):
                out = root / f"{method}-{seed}"
                run(parse_spec(small_spec(out, data=TINY, method={"name": method},
                                          train={"epochs": 1, "seed": seed}, eval={"bootstrap": 0})))
                folders.append(out)
        _RUNS["runs"] = folders
    return _RUNS["runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return seed_runs(tmp_path_factory.mktemp("seeds"))


def by_hand(folders, method, metric):
    return np.array([json.loads((f / "metrics.json").read_text())["overall" if "accuracy" == metric else "fairness"][metric]
                     for f in folders if f.name.startswith(method)])


@pytest.mark.parametrize("test", ["welch", "mannwhitney"])
def test_statistics_match_the_runs(runs, test):
    result = aggregate(read_runs(runs), METRICS, test=test)
    assert [g.label for g in result.groups] == ["erm", "uw"] and result.baseline.label == "erm"
    erm, uw = result.groups
    ps = []
    for metric in METRICS:
        for group, method in ((erm, "erm"), (uw, "uw")):
            values = by_hand(runs, method, metric)
            s = group.stats[metric]
            half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
            assert s.n == 3
            assert s.mean == pytest.approx(values.mean(), abs=1e-12)
            assert s.std == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert (s.low, s.high) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-12)
        a, b = by_hand(runs, "uw", metric), by_hand(runs, "erm", metric)
        expected = (stats.ttest_ind(a, b, equal_var=False) if test == "welch"
                    else stats.mannwhitneyu(a, b, alternative="two-sided")).pvalue
        assert np.isnan(expected) and math.isnan(uw.stats[metric].p) or uw.stats[metric].p == pytest.approx(expected)
        ps.append(uw.stats[metric].p)
    # Holm by hand over the defined p-values of the row
    defined = sorted((p, m) for p, m in zip(ps, METRICS, strict=True) if not math.isnan(p))
    running, expected_holm = 0.0, {}
    for rank, (p, m) in enumerate(defined):
        running = max(running, min(1.0, (len(defined) - rank) * p))
        expected_holm[m] = running
    for m in METRICS:
        assert uw.stats[m].p_holm == pytest.approx(expected_holm.get(m, math.nan), nan_ok=True)
        assert uw.stats[m].significant == (m in expected_holm and expected_holm[m] < 0.05)
    # relative time per epoch against erm
    times = {m: np.mean([json.loads((f / "metrics.json").read_text())["timing"]["seconds_per_epoch"]
                         for f in runs if f.name.startswith(m)]) for m in ("erm", "uw")}
    assert uw.relative_time == pytest.approx(times["uw"] / times["erm"])
    assert erm.relative_time == pytest.approx(1.0)


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)


def test_formats_names_and_baseline(runs, tmp_path):
    result = aggregate(read_runs(runs), ["accuracy", "eod", "deo"], baseline="uw")
    assert result.baseline.label == "uw"
    markdown = render(result, "markdown", names="study")
    header = markdown.splitlines()[0]
    assert "| acc | DEO | EOD |" in header  # the study's DEO is our eod, its EOD our deo
    assert "Welch's t-test" in markdown and "Holm" in markdown
    csv_rows = render(result, "csv").splitlines()
    assert csv_rows[0].startswith("group,method,n,accuracy_mean,accuracy_std,accuracy_ci_low")
    assert len(csv_rows) == 3
    latex = render(result, "latex")
    assert r"\begin{tabular}" in latex and r"$\pm$" in latex
    out = tmp_path / "table.md"
    done = CliRunner().invoke(app, ["compare", *map(str, runs), "--group-seeds", "--format", "markdown",
                                    "--metrics", "accuracy,eod", "--output", str(out)])
    assert done.exit_code == 0, done.output
    assert out.read_text().startswith("| group | n | accuracy | eod | time/epoch |")
    with pytest.raises(FairError, match="--baseline"):
        aggregate(read_runs(runs), ["accuracy"], baseline="nope")
    with pytest.raises(FairError, match="--metrics"):
        aggregate(read_runs(runs), ["nope"])


def test_ungrouped_compare_is_unchanged(runs):
    done = CliRunner().invoke(app, ["compare", *map(str, runs[:2])])
    assert done.exit_code == 0 and "runs" in done.stdout and "±" not in done.stdout


def test_repeats_of_a_two_stage_method_from_their_own_base_are_one_group():
    from fair_core.aggregate import group_key

    def metrics(seed, base):
        return {"spec": {"method": {"name": "fdr", "params": {"base": base}}, "train": {"seed": seed},
                         "data": {"name": "synthetic", "params": {"seed": seed}}}}

    assert group_key(metrics(0, "runs/erm-0")) == group_key(metrics(1, "runs/erm-1"))
    other = metrics(0, "runs/erm-0")
    other["spec"]["method"]["params"]["constraint"] = "ae"
    assert group_key(other) != group_key(metrics(0, "runs/erm-0"))
