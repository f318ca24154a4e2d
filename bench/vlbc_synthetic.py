"""VLBC on the synthetic biased dataset: fine-tuning on real + edited images against fine-tuning
on the real images alone, from the same baseline, with the same seed, recipe and budget.

Per seed: the baseline (examples/quickstart.json), `fair augment examples/vlbc/augment.json`
(the synthetic generator, the two labellers of examples/vlbc/, trained once, and the ContraCLIP
path of examples/vlbc/colour_path.safetensors), then examples/vlbc/finetune.json (real + edited,
``model.init`` = the baseline) and the same spec on the real data only. Prints mean ± std over the
seeds of accuracy, worst-group accuracy and accuracy gap, and each arm's ratio to the control.

    python bench/vlbc_synthetic.py [--seeds 0 1 2] [--train-size 2000] [--base-epochs 12]

The defaults are the settings tests/fair_methods/test_vlbc.py runs at seed 0 (a smaller training
set than the quickstart's, to keep the test short).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from fair_core.augment import augment, load_augment_spec  # noqa: E402
from fair_core.runner import run  # noqa: E402
from fair_core.spec import load_spec, parse_spec, read_spec_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "vlbc"


def vlbc_arms(out: Path, seed: int, train_size: int, base_epochs: int, labellers: dict[str, str]) -> dict[str, dict]:
    """Baseline, fine-tuned on real only, fine-tuned on real + edited: their metrics."""
    size = f"data.params.train_size={train_size}"
    base_recipe = [f"train.seed={seed}", f"train.epochs={base_epochs}", "train.scheduler=none"]
    base = run(load_spec(ROOT / "examples/quickstart.json", [size, *base_recipe,
                                                           "eval.bootstrap=0"], str(out / "base")))
    spec = load_augment_spec(EXAMPLES / "augment.json", [size, f"seed={seed}", f"output_dir={out / 'edited'}",
                                                        f"editor.params.paths={EXAMPLES / 'colour_path.safetensors'}",
                                                        *(f"labeller.params.models.{k}={v}" for k, v in labellers.items())])
    manifest = augment(spec, show_progress=False)
    finetune = read_spec_file(EXAMPLES / "finetune.json")
    finetune["data"]["params"]["datasets"][0]["params"]["train_size"] = train_size
    finetune["data"]["params"]["datasets"][1]["params"]["root"] = str(out / "edited")
    finetune["model"]["init"] = str(out / "base")
    finetune["train"]["seed"] = seed
    finetune["eval"]["bootstrap"] = 0
    edited = run(parse_spec({**finetune, "output_dir": str(out / "finetune")}))
    real_only = {**finetune, "data": {**finetune["data"], **finetune["data"]["params"]["datasets"][0]},
                 "output_dir": str(out / "finetune_real")}
    control = run(parse_spec(real_only))
    return {"baseline": base, "fine-tuned, real only": control, "fine-tuned, real + edited": edited,
            "manifest": manifest}


def train_labellers(out: Path) -> dict[str, str]:
    labellers = {}
    for attribute in ("shape", "color"):
        folder = out / f"{attribute}_labeller"
        run(load_spec(EXAMPLES / f"{attribute}_labeller.json", ["eval.bootstrap=0"], str(folder)))
        labellers[attribute] = str(folder)
    return labellers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--base-epochs", type=int, default=8)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        labellers = train_labellers(Path(tmp))
        for seed in args.seeds:
            arms = vlbc_arms(Path(tmp) / f"s{seed}", seed, args.train_size, args.base_epochs, labellers)
            manifest = arms.pop("manifest")
            print(f"seed {seed}: added {manifest['added']}, {manifest['rejected']} edits rejected", flush=True)
            for name, result in arms.items():
                row = (result["overall"]["accuracy"], result["fairness"]["worst_group_accuracy"],
                       result["fairness"]["accuracy_gap"])
                rows.setdefault(name, []).append(row)
                print(f"  {name}: " + " ".join(f"{v:.3f}" for v in row), flush=True)
    control = [statistics.mean(c) for c in zip(*rows["fine-tuned, real only"], strict=True)]
    print(f"\nVLBC on the synthetic dataset (train_size {args.train_size}, baseline {args.base_epochs} epochs), "
          f"seeds {args.seeds}\n")
    print("| arm | accuracy | worst-group accuracy | accuracy gap | gap / control |\n|---|---|---|---|---|")
    for name, values in rows.items():
        cells = [f"{statistics.mean(c):.3f} ± {statistics.stdev(c) if len(c) > 1 else 0:.3f}"
                 for c in zip(*values, strict=True)]
        ratio = statistics.mean(v[2] for v in values) / control[2]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    print(json.dumps({k: v for k, v in rows.items()}))


if __name__ == "__main__":
    main()
