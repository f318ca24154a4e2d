"""Throughput of `fair evaluate` against a plain PyTorch loop: the same model (a run folder of this
project), data, batch size and device (the GPU when there is one). Prints images/s of each and
their ratio (target: fair evaluate within 5% of the plain loop).

    python bench/evaluate.py [--model resnet18] [--image-size 64] [--images 4096] [--batch-size 256] [--workers 0]

`fair evaluate` is timed by itself (its metrics.json `timing`: the evaluation loop, from the
DataLoader to the gathered scores; not the bootstrap or the files); the plain loop is what one
writes by hand doing the same work: a DataLoader over the run's test split (images as read), each
batch normalised on the device and through the network, the scores kept. Each is run once to warm up (allocator, kernels), then once timed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from fair_core import from_pretrained  # noqa: E402
from fair_core.evaluate import evaluate_model  # noqa: E402
from fair_core.plugins import get_registry  # noqa: E402
from fair_core.runner import run  # noqa: E402
from fair_core.spec import parse_spec  # noqa: E402
from fair_core.tasks.base import collate  # noqa: E402


def make_spec(args, out: Path) -> dict:
    return {
        "data": {"name": "synthetic", "params": {"train_size": 64, "val_size": 8, "test_size": args.images,
                                                 "image_size": args.image_size}},
        "model": {"name": args.model, "params": {}},
        "train": {"epochs": 1, "batch_size": 32, "num_workers": args.workers},
        "eval": {"batch_size": args.batch_size, "bootstrap": 0},
        "output_dir": str(out),
    }


def plain_loop(run_dir: Path, spec: dict, args) -> float:
    """Images/s of a hand-written evaluation of the run's model on its test split."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = from_pretrained(run_dir).to(device)
    network = model.network.eval()
    builder_cls = get_registry().get("datasets", "synthetic").obj
    builder = builder_cls(builder_cls.Params.model_validate(spec["data"]["params"]), "synthetic")
    # the same work as fair evaluate: images as read, normalised on the device a batch at a time
    test = builder.load("test", None, None).with_transform(None)
    loader = DataLoader(test, batch_size=args.batch_size, shuffle=False, num_workers=args.workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    start = time.perf_counter()
    scores = []
    with torch.no_grad():
        for batch in loader:
            images = model.preprocessing.normalize(batch["image"].to(device, non_blocking=True))
            scores.append(network(images).float())
        predictions = torch.cat(scores).argmax(1).cpu()
    seconds = time.perf_counter() - start
    assert predictions.numel() == len(test)
    return len(test) / seconds


def fair_evaluate(run_dir: Path, spec: dict, out: Path) -> float:
    result = evaluate_model(str(run_dir), parse_spec({**spec, "output_dir": str(out)}), overwrite=True)
    return result["timing"]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        spec = make_spec(args, run_dir)
        run(parse_spec(spec))  # a model of this project: one epoch on a small training set
        plain_loop(run_dir, spec, args)  # warm-up
        fair_evaluate(run_dir, spec, Path(tmp) / "warm-up")
        plain = plain_loop(run_dir, spec, args)
        ours = fair_evaluate(run_dir, spec, Path(tmp) / "evaluate")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{args.model} at {args.image_size} px, {args.images} images, batch {args.batch_size}, "
          f"{args.workers} workers, {device}")
    print(f"plain PyTorch loop: {plain:9.1f} images/s")
    print(f"fair evaluate:      {ours:9.1f} images/s")
    print(f"ratio fair/plain:   {ours / plain:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
