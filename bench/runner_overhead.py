"""The runner's overhead: the same model, data and steps through `fair run` and through a plain
PyTorch loop written here. Prints seconds per epoch of each and their ratio (target: within 3%).

    python bench/runner_overhead.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from fair_core.runner import EpochSampler, resolve, run, seed_everything  # noqa: E402
from fair_core.spec import load_spec  # noqa: E402
from fair_core.tasks.base import collate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(spec, epochs: int) -> list[float]:
    """Plain PyTorch: the same dataset object, sampler, collate, model and optimiser; no runner."""
    resolved = resolve(spec)
    seed_everything(spec.train.seed)
    train = resolved.dataset.load("train", None, None, train=True)
    model = resolved.model.build(train.info.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.train.lr)
    sampler = EpochSampler(len(train), spec.train.seed)
    loader = DataLoader(train, batch_size=spec.train.batch_size, sampler=sampler, collate_fn=collate)
    times = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        start = time.perf_counter()
        for batch in loader:
            loss = F.cross_entropy(model(batch["image"]), batch["target"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so drifts of the machine hit both alike
            spec = load_spec(ROOT / "examples/quickstart.json",
                             [f"train.epochs={args.epochs}", "eval.bootstrap=0"], f"{tmp}/run{repeat}")
            theirs.append(statistics.mean(plain_loop(spec, args.epochs)))
            ours.append(run(spec)["timing"]["seconds_per_epoch"])
    fair_s, plain_s = min(ours), min(theirs)
    print(f"quickstart data and model, {args.epochs} epochs, best of {args.repeats}")
    print(f"plain PyTorch loop: {plain_s:.3f} s/epoch")
    print(f"fair run:           {fair_s:.3f} s/epoch  (includes checkpoint writes and logging)")
    print(f"ratio fair/plain:   {fair_s / plain_s:.3f}")


if __name__ == "__main__":
    main()
