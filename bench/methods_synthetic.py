"""Every registered classification method on the synthetic biased dataset, over several seeds.

Each method runs with the ``method.params`` of its example spec (``examples/<name>.json``: its
settings for this dataset), on the quickstart spec's data, model and budget. Prints one table
(mean +- std over seeds) of accuracy, balanced accuracy, worst-group accuracy,
accuracy gap, SPD, DEO, EOD, AAOD, and seconds per epoch relative to ERM measured in the same
run; writes it as Markdown and an accuracy-vs-DEO scatter plot to bench/results/.

    python bench/methods_synthetic.py [--seeds 0 1 2] [--epochs 12] [--methods erm us ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from fair_core.plugins import get_registry  # noqa: E402
from fair_core.runner import run  # noqa: E402
from fair_core.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [("overall", "accuracy", "acc"), ("overall", "balanced_accuracy", "bacc"),
           ("fairness", "worst_group_accuracy", "worst-group acc"), ("fairness", "accuracy_gap", "acc gap"),
           ("fairness", "spd", "SPD"), ("fairness", "deo", "DEO"), ("fairness", "eod", "EOD"), ("fairness", "aaod", "AAOD")]


def example_params(method: str) -> list[str]:
    """``method.params`` overrides of the method's example spec (its settings for this dataset)."""
    path = ROOT / "examples" / f"{method}.json"
    params = json.loads(path.read_text())["method"].get("params", {}) if path.exists() else {}
    return [f"method.params.{key}={json.dumps(value)}" for key, value in params.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    methods = args.methods or get_registry().names("methods")
    methods = ["erm"] + [m for m in methods if m != "erm"]  # the baseline first
    results: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in methods:
                spec = load_spec(ROOT / "examples/quickstart.json",
                                 [f"method.name={method}", f"train.epochs={args.epochs}", f"train.seed={seed}",
                                  f"data.params.seed={seed}", "eval.bootstrap=0", *example_params(method)],
                                 f"{tmp}/{method}-{seed}")
                result = run(spec)
                results[method].append(result)
                print(f"seed {seed} {method:6s} acc {result['overall']['accuracy']:.3f} "
                      f"worst-group {result['fairness']['worst_group_accuracy']:.3f} "
                      f"{result['timing']['seconds_per_epoch']:.2f} s/epoch", flush=True)

    erm_time = statistics.mean(r["timing"]["seconds_per_epoch"] for r in results["erm"])
    header = ["method", *(c[2] for c in COLUMNS), "time/epoch vs ERM"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for method, runs in results.items():
        cells, summary[method] = [method], {}
        for section, key, _ in COLUMNS:
            values = [r[section][key] for r in runs]
            mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            summary[method][key] = (mean, std)
            cells.append(f"{mean:.3f} ± {std:.3f}")
        ratio = statistics.mean(r["timing"]["seconds_per_epoch"] for r in runs) / erm_time
        cells.append(f"{ratio:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    title = (f"Methods on the synthetic biased dataset (examples/quickstart.json, {args.epochs} epochs, "
             f"seeds {args.seeds}); ERM: {erm_time:.2f} s/epoch")
    print(f"\n{title}\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "methods_synthetic.md").write_text(f"{title}\n\n{table}\n")
    (args.out / "methods_synthetic.json").write_text(json.dumps({m: [r["overall"] | r["fairness"] for r in rs]
                                                                 for m, rs in results.items()}, indent=1))
    plot(summary, args.out / "methods_synthetic.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, values in summary.items():
        (acc, acc_sd), (deo, deo_sd) = values["accuracy"], values["deo"]
        ax.errorbar(deo, acc, xerr=deo_sd, yerr=acc_sd, fmt="o", capsize=3)
        ax.annotate(method, (deo, acc), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("DEO (equal-opportunity difference, lower is fairer)")
    ax.set_ylabel("accuracy")
    ax.set_title("synthetic biased dataset: accuracy vs DEO")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
