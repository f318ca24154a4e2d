"""The face-recognition methods on the synthetic identities (``synthetic_faces``), over several seeds.

Each method runs its example spec (``examples/faces_<method>.json``, ``examples/faces.json`` for the
softmax baseline ``erm``): the same data, backbone (``small_embedding_cnn``), optimiser, epochs and
batch size, only the method differs. Seed ``s`` sets both ``train.seed`` and the data seed. Prints
one table (mean +- std over seeds) of the verification metrics at the examples' operating point
(FPR 1e-3): TPR, TPR gap between the groups, worst-group TPR; MixFairFace's instance-level
protocol at the same rate (std and mean of the per-identity TPR); the RFW-style pair accuracy and
its std over the groups; seconds per epoch against ``margin`` (CosFace) measured in the same run.
Then, per method, on how many seeds it beat ``margin`` (same seed) on each fairness metric.

    python bench/faces_synthetic.py [--seeds 0 1 2] [--methods erm margin mixfairface multibranch ddl]
                                    [--methods "ddl@method.params.balance_branches=false" ...]

A method written ``name@field=value[@field=value]`` runs its example with those overrides (a variant
row of the table, e.g. DDL without its branch-balanced batches).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from fair_core.runner import run  # noqa: E402
from fair_core.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "margin"
# (section, metric, column, higher is better)
COLUMNS = [("overall", "tpr_at_fpr", "TPR", True), ("fairness", "tpr_gap", "TPR gap", False),
           ("fairness", "worst_group_tpr", "worst-group TPR", True), ("fairness", "inst_tpr_std", "identity TPR std", False),
           ("overall", "inst_tpr_mean", "identity TPR mean", True), ("overall", "rfw_val_acc", "pair acc", True),
           ("fairness", "rfw_val_std", "pair acc std", False)]


def example(method: str) -> tuple[Path, list[str]]:
    """The example spec of ``name[@override...]`` and the overrides."""
    name, *overrides = method.split("@")
    return ROOT / "examples" / ("faces.json" if name == "erm" else f"faces_{name}.json"), overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["erm", BASELINE, "mixfairface", "multibranch", "ddl"])
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="spec overrides for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    methods = [BASELINE] + [m for m in args.methods if m != BASELINE]  # the baseline first
    results: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in methods:
                path, variant = example(method)
                spec = load_spec(path, [f"train.seed={seed}", f"data.params.seed={seed}", *variant, *args.overrides],
                                 f"{tmp}/run-{methods.index(method)}-seed{seed}")
                result = run(spec)
                results[method].append(result)
                print(f"seed {seed} {method:12s} " + " ".join(f"{c[2]} {result[c[0]][c[1]]:.3f}" for c in COLUMNS)
                      + f" {result['timing']['seconds_per_epoch']:.1f} s/epoch", flush=True)

    base_time = statistics.mean(r["timing"]["seconds_per_epoch"] for r in results[BASELINE])
    header = ["method", *(c[2] for c in COLUMNS), f"time/epoch vs {BASELINE}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    wins = []
    for method, outcomes in results.items():
        cells = [method]
        for section, key, _, _ in COLUMNS:
            values = [r[section][key] for r in outcomes]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {std:.3f}")
        cells.append(f"{statistics.mean(r['timing']['seconds_per_epoch'] for r in outcomes) / base_time:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
        if method != BASELINE:
            better = []
            for section, key, column, higher in COLUMNS:
                count = sum((r[section][key] > b[section][key]) == higher and r[section][key] != b[section][key]
                            for r, b in zip(outcomes, results[BASELINE], strict=True))
                better.append(f"{column} {count}/{len(outcomes)}")
            wins.append(f"{method} better than {BASELINE} (same seed): " + ", ".join(better))
    table = "\n".join(lines)
    title = f"Face methods on synthetic_faces (examples/faces_*.json, seeds {args.seeds}); {BASELINE}: {base_time:.1f} s/epoch"
    print(f"\n{title}\n\n{table}\n\n" + "\n".join(wins))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faces_synthetic.md").write_text(f"{title}\n\n{table}\n\n" + "\n".join(wins) + "\n")
    (args.out / "faces_synthetic.json").write_text(json.dumps(
        {m: [r["overall"] | r["fairness"] for r in rs] for m, rs in results.items()}, indent=1))


if __name__ == "__main__":
    main()
