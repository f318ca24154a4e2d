"""Seed-aggregated comparison of runs (``fair compare --group-seeds``, and ``fair compare`` on a
sweep folder).

* **Groups.** Runs are grouped by every result-determining spec field
  (:func:`fair_core.run_folder.result_fields`) except the seeds of the repeat, :data:`SEED_FIELDS`:
  ``train.seed`` and ``data.params.seed``. The data seed counts as a seed because a sweep that
  varies it with the train seed repeats the same experiment on another draw of the data; a sweep
  that varies only one of them groups the same way (the other is constant). So does a two-stage
  method's ``method.params.base``: the model each repeat starts from is that repeat's own (its
  seed's ERM run), so the repeats of one method differ in it by design.
* **Rows.** Per metric: mean, std (``ddof=1``), the 95% Student-t interval of the mean
  (``mean +- t_{0.975, n-1} std / sqrt(n)``) and n; the training time per epoch relative to the
  baseline row's (``timing.seconds_per_epoch`` of metrics.json).
* **Tests.** Each row against the baseline row (ERM, or ``--baseline``): per metric Welch's
  t-test (``scipy.stats.ttest_ind(equal_var=False)``) or the Mann-Whitney U test
  (``scipy.stats.mannwhitneyu``, two-sided), Holm-corrected across the metrics of the row; a cell
  whose corrected p-value is below ``alpha`` is marked ``*``.
* **Names.** :data:`COLUMN_NAMES` is the one table of column-name schemes (``--names study``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import FairError
from .report import SIZE_KEYS, display_label, read_metrics

SEED_FIELDS = ("train.seed", "data.params.seed", "method.params.base")

# The ISSTA 2024 fairness study ("DL-Fairness-Study") names the equalized-odds difference "DEO" and
# the equal-opportunity difference "EOD": the reverse of this project's `eod` / `deo`.
COLUMN_NAMES: dict[str, dict[str, str]] = {
    "fair": {},
    "study": {"accuracy": "acc", "balanced_accuracy": "bacc", "spd": "SPD", "eod": "DEO", "deo": "EOD",
              "aaod": "AAOD", "accuracy_gap": "AED"},
}
TESTS = {"welch": "Welch's t-test", "mannwhitney": "Mann-Whitney U test"}
FORMATS = ("console", "markdown", "csv", "latex")
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "*": r"$^{*}$"}


def column_name(metric: str, names: str = "fair") -> str:
    if names not in COLUMN_NAMES:
        raise FairError(f"--names: unknown scheme {names!r}; choose one of {', '.join(COLUMN_NAMES)}")
    return COLUMN_NAMES[names].get(metric, metric)


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]

    @property
    def values(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for section in ("overall", "fairness"):
            for k, v in self.metrics.get(section, {}).items():
                if k not in SIZE_KEYS:
                    out.setdefault(k, v)
        return out

    @property
    def seconds_per_epoch(self) -> float | None:
        timing = self.metrics.get("timing")
        value = timing.get("seconds_per_epoch") if isinstance(timing, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Stat:
    values: list[float]
    mean: float = math.nan
    std: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p: float = math.nan  # against the baseline, uncorrected
    p_holm: float = math.nan
    significant: bool = False

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class Group:
    label: str
    key: str  # JSON of the grouping fields
    fields: dict[str, Any]
    runs: list[Run]
    stats: dict[str, Stat] = field(default_factory=dict)
    relative_time: float | None = None
    seconds_per_epoch: float | None = None

    @property
    def method(self) -> str:
        return display_label(self.runs[0].metrics)


def expand_run_dirs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Run folders of ``paths``: a sweep folder (holding ``sweep.json``) stands for its finished
    cells; its other cells are returned as notes (``cell: state, error``), not compared."""
    from .run_folder import run_state
    from .sweep import SWEEP_FILE

    runs: list[Path] = []
    notes: list[str] = []
    for p in map(Path, paths):
        manifest = p / SWEEP_FILE
        if not manifest.is_file():
            runs.append(p)
            continue
        try:
            cells = json.loads(manifest.read_text(encoding="utf-8")).get("cells", {})
        except (OSError, ValueError, AttributeError):
            raise FairError(f"{manifest}: not a readable sweep manifest") from None
        for name in cells if isinstance(cells, dict) else ():
            folder = p / name
            state = run_state(folder)
            if state == "finished":
                runs.append(folder)
            else:
                entry = cells[name] if isinstance(cells[name], dict) else {}
                error = entry.get("error")
                notes.append(f"{p.name}/{name}: {state or 'not started'}" + (f" ({error})" if error else ""))
    if not runs:
        raise FairError("no finished run to compare" + (f" ({'; '.join(notes[:3])})" if notes else ""))
    return runs, notes


def read_runs(run_dirs: Sequence[Path]) -> list[Run]:
    from .run_folder import run_state

    runs = []
    for d in run_dirs:
        state = run_state(Path(d))
        if state not in (None, "finished"):
            raise FairError(f"{d}: the run there is {state}, not finished; its results (if any) are not this run's: "
                            f"compare it once it has finished")
        runs.append(Run(Path(d), read_metrics(d)))
    return runs


def group_key(metrics: dict[str, Any]) -> dict[str, Any]:
    from .run_folder import result_fields

    spec = metrics.get("spec") or {}
    fields = {k: v for k, v in result_fields(spec).items() if k not in SEED_FIELDS}
    fields["@label"] = display_label(metrics)  # an evaluation names its model, a run its method
    return fields


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by all their result fields but the seeds, labelled by the method (or model)
    and, where several groups share it, the fields that tell them apart (a method's own recipe,
    e.g. us's epochs in a sweep of methods, is not shown: it does not tell two groups apart)."""
    by_key: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in runs:
        fields = group_key(run.metrics)
        key = json.dumps(fields, sort_keys=True, default=str)
        by_key.setdefault(key, (fields, []))[1].append(run)
    def varying(label: str) -> list[str]:  # the fields that tell apart the groups of one method
        same = [f for f, _ in by_key.values() if f["@label"] == label]
        names = sorted({k for f in same for k in f} - {"@label", "method.name"})
        return [k for k in names if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in same}) > 1]

    groups = []
    for key, (fields, members) in by_key.items():
        label = str(fields["@label"])
        extra = [f"{k}={json.dumps(fields.get(k), default=str)}" for k in varying(label)]
        groups.append(Group(label + (f" ({', '.join(extra)})" if extra else ""), key, fields, members))
    return groups


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """mean, std (ddof 1), and the Student-t interval of the mean (nan bounds below 2 values)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def p_value(a: Sequence[float], b: Sequence[float], test: str) -> float:
    """Two-sided p-value of ``a`` against ``b``; nan when a sample has fewer than 2 values or the
    test is undefined (two constant samples)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    if test not in TESTS:
        raise FairError(f"--test: unknown test {test!r}; choose one of {', '.join(TESTS)}")
    with warnings.catch_warnings():  # nearly constant samples: scipy warns, the p-value says it
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "welch":
            return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan entries are left out of the family and stay nan)."""
    index = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m = len(index)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(index):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Aggregate:
    groups: list[Group]
    metrics: list[str]
    baseline: Group | None
    test: str
    alpha: float
    confidence: float
    notes: list[str] = field(default_factory=list)

    def caption(self, names: str = "fair") -> str:
        ns = sorted({g.stats[m].n for g in self.groups for m in self.metrics if m in g.stats})
        text = (f"mean ± std over seeds (n = {', '.join(map(str, ns)) or '-'}), "
                f"[{self.confidence:.0%} Student-t interval of the mean]")
        if self.baseline is not None:
            text += (f"; * : p < {self.alpha:g} against {self.baseline.label}, {TESTS[self.test]}, "
                     f"Holm-corrected across the {len(self.metrics)} metrics of a row")
            text += f"; time/epoch relative to {self.baseline.label}"
        return text


def aggregate(runs: Sequence[Run], metrics: Sequence[str] | None = None, baseline: str | None = None,
              test: str = "welch", alpha: float = 0.05, confidence: float = 0.95) -> Aggregate:
    """Groups of ``runs`` with their statistics (see the module docstring). ``baseline``: a group's
    label or method name (default ``erm`` when present)."""
    if test not in TESTS:
        raise FairError(f"--test: unknown test {test!r}; choose one of {', '.join(TESTS)}")
    groups = group_runs(runs)
    available: dict[str, None] = {}
    for g in groups:
        for r in g.runs:
            for k in r.values:
                available.setdefault(k)
    if metrics:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise FairError(f"--metrics: {', '.join(unknown)} not in the runs' metrics; they have: {', '.join(available)}")
        chosen = list(metrics)
    else:
        chosen = list(available)
    for g in groups:
        for m in chosen:
            values = [float(v) for r in g.runs if isinstance(v := r.values.get(m), (int, float)) and not math.isnan(v)]
            mean, std, low, high = t_interval(values, confidence)
            g.stats[m] = Stat(values, mean, std, low, high)
        times = [t for r in g.runs if (t := r.seconds_per_epoch) is not None]
        g.seconds_per_epoch = sum(times) / len(times) if times else None
    base = find_baseline(groups, baseline)
    if base is not None:
        for g in groups:
            if base.seconds_per_epoch and g.seconds_per_epoch is not None:
                g.relative_time = g.seconds_per_epoch / base.seconds_per_epoch
            if g is base:
                continue
            ps = [p_value(g.stats[m].values, base.stats[m].values, test) for m in chosen]
            for m, p, q in zip(chosen, ps, holm(ps), strict=True):
                g.stats[m].p, g.stats[m].p_holm = p, q
                g.stats[m].significant = not math.isnan(q) and q < alpha
    return Aggregate(groups, chosen, base, test, alpha, confidence)


def find_baseline(groups: Sequence[Group], name: str | None) -> Group | None:
    wanted = name or "erm"
    matches = [g for g in groups if g.label == wanted] or [g for g in groups if g.method == wanted]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise FairError(f"--baseline: {wanted!r} names {len(matches)} rows ({'; '.join(g.label for g in matches)}); "
                        f"pass one row's full label")
    if name is not None:
        raise FairError(f"--baseline: no row {name!r}; rows: {'; '.join(g.label for g in groups)}")
    return None


# --------------------------------------------------------------------------- tables
def _num(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(result: Aggregate, fmt: str = "console", names: str = "fair") -> tuple[list[str], list[list[str]]]:
    """Header and rows: text cells (``mean ± std [lo, hi]*``) for console / markdown / latex, one
    numeric column per statistic for csv."""
    columns = [column_name(m, names) for m in result.metrics]
    if fmt == "csv":
        header = ["group", "method", "n"]
        for c in columns:
            header += [f"{c}_mean", f"{c}_std", f"{c}_ci_low", f"{c}_ci_high", f"{c}_p", f"{c}_p_holm", f"{c}_significant"]
        header += ["seconds_per_epoch", "relative_time_per_epoch"]
        rows = []
        for g in result.groups:
            row = [g.label, g.method, str(len(g.runs))]
            for m in result.metrics:
                s = g.stats[m]
                row += [_num(s.mean, 6), _num(s.std, 6), _num(s.low, 6), _num(s.high, 6), _num(s.p, 6),
                        _num(s.p_holm, 6), str(s.significant).lower() if g is not result.baseline else ""]
            row += [_num(g.seconds_per_epoch if g.seconds_per_epoch is not None else math.nan, 4),
                    _num(g.relative_time if g.relative_time is not None else math.nan, 3)]
            rows.append(row)
        return header, rows
    header = ["group", "n", *columns, "time/epoch"]
    rows = []
    for g in result.groups:
        cells = []
        for m in result.metrics:
            s = g.stats[m]
            text = _num(s.mean) + ("" if math.isnan(s.std) else f" ± {s.std:.4f}")
            if not math.isnan(s.low):
                text += f" [{s.low:.3f}, {s.high:.3f}]"
            cells.append(text + ("*" if s.significant else ""))
        time = "-" if g.relative_time is None else f"{g.relative_time:.2f}x"
        n = sorted({s.n for s in g.stats.values()})
        rows.append([g.label + (" (baseline)" if g is result.baseline else ""), "/".join(map(str, n)), *cells, time])
    return header, rows


def render(result: Aggregate, fmt: str = "markdown", names: str = "fair") -> str:
    """The table as Markdown, CSV or LaTeX text (console tables are drawn by the command line)."""
    if fmt not in FORMATS:
        raise FairError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    header, rows = table(result, fmt, names)
    caption = result.caption(names)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines) + f"\n\n{caption}\n"
    if fmt == "latex":
        def esc(text: str) -> str:
            return "".join(_LATEX.get(ch, ch) for ch in text)

        spec = "l" + "r" * (len(header) - 1)
        lines = [r"\begin{table}", r"\centering", f"\\caption{{{esc(caption)}}}", f"\\begin{{tabular}}{{{spec}}}",
                 r"\toprule", " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in row) + r" \\" for row in rows]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"
    raise FairError("render: console tables are drawn by the command line")


FormatName = Literal["console", "markdown", "csv", "latex"]
