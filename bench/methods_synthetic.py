"""Every registered classification method on the synthetic biased dataset, over several seeds.

Each method runs with the settings of its example spec (``examples/<name>.json``) on the
quickstart spec's data and model: its ``method.params``, its training recipe (weight decay,
learning-rate schedule) and its epochs relative to ``examples/erm.json`` (US: 8x, for ERM's number
of steps on its ~10x smaller training set). ERM also runs with every recipe a method uses, so each
method has a baseline trained the same way (``erm (weight_decay=..., ...)`` rows). A two-stage
method (mfd, fdr, fair_reprogram, faap) starts from that baseline's run of the same seed
(``method.params.base``): its teacher or frozen predictor is exactly the ERM row's model. Prints
one table (mean +- std over seeds) of accuracy, balanced accuracy, worst-group accuracy,
accuracy gap, SPD, DEO, EOD, AAOD, the leakage of the protected attribute (held-out accuracy of a
logistic-regression adversary on the model's class scores and on its features,
:mod:`fair_core.leakage`; the floor is the majority group's share of the test set), and seconds
per epoch relative to ERM measured in the same run (a method whose work is all after training,
fdr, shows its post-training seconds); writes it as Markdown and an accuracy-vs-DEO scatter plot
to bench/results/.

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

from fair_core.hub import from_pretrained  # noqa: E402
from fair_core.leakage import model_leakage  # noqa: E402
from fair_core.plugins import get_registry  # noqa: E402
from fair_core.runner import run  # noqa: E402
from fair_core.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [("overall", "accuracy", "acc"), ("overall", "balanced_accuracy", "bacc"),
           ("fairness", "worst_group_accuracy", "worst-group acc"), ("fairness", "accuracy_gap", "acc gap"),
           ("fairness", "spd", "SPD"), ("fairness", "deo", "DEO"), ("fairness", "eod", "EOD"), ("fairness", "aaod", "AAOD")]


LEAKAGE = [("scores", "leakage (scores)"), ("features", "leakage (features)"), ("majority", "majority group")]

RECIPE_KEYS = ("weight_decay", "scheduler", "milestones", "gamma")


def example_settings(method: str) -> tuple[list[str], tuple[str, ...], float]:
    """The method's example spec (its settings for this dataset): ``method.params`` overrides, its
    training recipe (``train`` keys in RECIPE_KEYS, as overrides) and its epochs relative to ERM's."""
    path = ROOT / "examples" / f"{method}.json"
    if not path.exists():
        return [], (), 1.0
    example = json.loads(path.read_text())
    params = [f"method.params.{key}={json.dumps(value)}" for key, value in example["method"].get("params", {}).items()]
    recipe = tuple(f"train.{key}={json.dumps(value)}" for key, value in example["train"].items() if key in RECIPE_KEYS)
    erm_epochs = json.loads((ROOT / "examples/erm.json").read_text())["train"]["epochs"]
    return params, recipe, example["train"]["epochs"] / erm_epochs


def baseline_name(recipe: tuple[str, ...]) -> str:
    """``erm``, or ``erm (weight_decay=0.0001, scheduler=multistep)`` for ERM trained with a recipe."""
    settings = [override.removeprefix("train.").replace('"', "") for override in recipe]
    return f"erm ({', '.join(settings)})" if settings else "erm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args()
    registry = get_registry()
    methods = args.methods or [name for name in registry.names("methods")
                               if registry.entries["methods"][name].obj.supports("classification")]
    runs: dict[str, tuple[str, list[str], int, str]] = {}  # row name -> (method, overrides, epochs, baseline row)
    for method in ["erm"] + [m for m in methods if m != "erm"]:  # the baseline first
        params, recipe, epoch_factor = example_settings(method)
        if baseline_name(recipe) not in runs:
            runs[baseline_name(recipe)] = ("erm", list(recipe), args.epochs, baseline_name(recipe))
        if method != "erm":
            runs[method] = (method, [*params, *recipe], round(args.epochs * epoch_factor), baseline_name(recipe))
    results: dict[str, list[dict]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            folders: dict[str, str] = {}
            for i, (name, (method, overrides, epochs, baseline)) in enumerate(runs.items()):
                folders[name] = f"{tmp}/run{i}-seed{seed}"
                if registry.entries["methods"][method].obj.two_stage:  # from the baseline row's model
                    overrides = [*overrides, f"method.params.base={json.dumps(folders[baseline])}"]
                spec = load_spec(ROOT / "examples/quickstart.json",
                                 [f"method.name={method}", f"train.epochs={epochs}", f"train.seed={seed}",
                                  f"data.params.seed={seed}", "eval.bootstrap=0", *overrides], folders[name])
                result = run(spec)
                result["leakage"] = leakage(folders[name], seed)
                results[name].append(result)
                print(f"seed {seed} {name:6s} acc {result['overall']['accuracy']:.3f} "
                      f"worst-group {result['fairness']['worst_group_accuracy']:.3f} "
                      f"leakage {result['leakage']['scores']:.3f} / {result['leakage']['features']:.3f} "
                      f"{time_note(result)}", flush=True)

    erm_time = statistics.mean(r["timing"]["seconds_per_epoch"] for r in results["erm"])
    header = ["method", *(c[2] for c in COLUMNS), *(c[1] for c in LEAKAGE), "time/epoch vs ERM"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}
    for method, outcomes in results.items():
        cells, summary[method] = [method], {}
        for section, key, _ in COLUMNS:
            values = [r[section][key] for r in outcomes]
            mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            summary[method][key] = (mean, std)
            cells.append(f"{mean:.3f} ± {std:.3f}")
        for key, _ in LEAKAGE:
            values = [r["leakage"][key] for r in outcomes]
            cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}")
        if all(r["timing"]["seconds_per_epoch"] for r in outcomes):
            ratio = statistics.mean(r["timing"]["seconds_per_epoch"] for r in outcomes) / erm_time
            cells.append(f"{ratio:.2f}x")
        else:
            cells.append(f"{statistics.mean(r['timing']['seconds_post_train'] for r in outcomes):.1f} s after training")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    title = (f"Methods on the synthetic biased dataset (examples/quickstart.json, {args.epochs} epochs, "
             f"seeds {args.seeds}); ERM: {erm_time:.2f} s/epoch")
    print(f"\n{title}\n\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "methods_synthetic.md").write_text(f"{title}\n\n{table}\n")
    (args.out / "methods_synthetic.json").write_text(json.dumps({m: [r["overall"] | r["fairness"] | {
        f"leakage_{k}": v for k, v in r["leakage"].items()} for r in rs]
                                                                 for m, rs in results.items()}, indent=1))
    plot(summary, args.out / "methods_synthetic.png")


def leakage(folder: str, seed: int) -> dict[str, float]:
    """The protected attribute's leakage from the run's saved model on its test split."""
    model = from_pretrained(folder)
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    test = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"]).load("test", None, None)
    return model_leakage(model, test, seed=seed)


def time_note(result: dict) -> str:
    timing = result["timing"]
    if timing["seconds_per_epoch"]:
        return f"{timing['seconds_per_epoch']:.2f} s/epoch"
    return f"{timing['seconds_post_train']:.1f} s after training"


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
