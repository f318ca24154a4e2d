"""fair_core's fairness metrics vs fairlearn's MetricFrame on the same 1e6 predictions.

For 2, 8 and 32 groups: both compute accuracy, TPR, FPR and selection rate by group, SPD and EOD;
the script checks that the values agree and prints the time of each and their ratio (target:
fair_core at least 500x faster).

    python bench/metrics_vs_fairlearn.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from fair_core import metrics as M


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def compare(n: int, num_groups: int) -> None:
    g = torch.Generator().manual_seed(num_groups)
    targets = torch.randint(0, 2, (n,), generator=g)
    groups = torch.randint(0, num_groups, (n,), generator=g)
    noise = torch.rand(n, generator=g) < 0.1 + 0.4 * groups / num_groups
    preds = torch.where(noise, 1 - targets, targets)

    def ours():
        counts = M.group_confusion(preds, targets, groups, 2, num_groups)
        return {"acc": M.group_accuracy(counts), "tpr": M.group_true_positive_rate(counts),
                "fpr": M.group_false_positive_rate(counts), "sel": M.group_selection_rate(counts),
                "spd": M.statistical_parity_difference(counts), "eod": M.equalized_odds_difference(counts)}

    fast, values = best_of(ours, 20)
    y, p, s = targets.numpy(), preds.numpy(), groups.numpy()

    def theirs():
        frame = MetricFrame(metrics={"acc": accuracy_score, "tpr": true_positive_rate, "fpr": false_positive_rate,
                                     "sel": selection_rate}, y_true=y, y_pred=p, sensitive_features=s)
        return (frame.by_group, demographic_parity_difference(y, p, sensitive_features=s),
                equalized_odds_difference(y, p, sensitive_features=s))

    slow, (by_group, spd, eod) = best_of(theirs, 1)
    diff = max([np.abs(values[k].numpy() - by_group[k].to_numpy()).max() for k in ("acc", "tpr", "fpr", "sel")]
               + [abs(values["spd"].item() - spd), abs(values["eod"].item() - eod)])
    assert diff < 1e-9, diff
    print(f"{num_groups:>6} | {fast * 1e3:>14.2f} | {slow:>13.2f} | {slow / fast:>8.0f}x | {diff:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.n:,} binary predictions; fair_core: best of 20 runs, fairlearn: one run\n")
    print(f"{'groups':>6} | {'fair_core (ms)':>14} | {'fairlearn (s)':>13} | {'speed-up':>9} | max |diff|")
    for num_groups in (2, 8, 32):
        compare(args.n, num_groups)


if __name__ == "__main__":
    main()
