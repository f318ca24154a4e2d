"""Segmentation throughput: images/s of training steps (forward, backward, AdamW step) and of
evaluation (no_grad forward in eval mode) of the Semantic FPN (`fpn`, 150 classes as ADE20K),
with plain training (`erm`) and with `zut`, whose zero image makes every training forward run
the backbone on B + 1 images and the decode head once more on the zero image alone. Ratios are
against erm of the same mode, measured in the same run (windows interleaved); the expected time
ratio of zut's training step is about (B + 1) / B plus the head's extra call; its evaluation is
erm's (the hooks act in training mode only).

    python bench/segmentation.py [--backbone resnet50] [--size 512] [--batch 16] [--steps 10]
                                 [--windows 5] [--warmup 5] [--device auto|cpu|cuda] [--amp]

On a CPU every setting not given takes a smaller default (256 px, batch 4, 3 timed windows of one
step after 1 warmup step; about 3 minutes on 2 busy cores) and the output says which. On a GPU
(e.g. one H200), fp32 then bf16 autocast:

    python bench/segmentation.py --device cuda --size 512 --batch 16 --steps 10 --windows 5 --warmup 5
    python bench/segmentation.py --device cuda --size 512 --batch 16 --steps 10 --windows 5 --warmup 5 --amp

The methods are built as the runner builds them (registry class, ``build_model`` around the
builder's model, ``configure_optimizers``) and a step is ``compute_loss`` on a batch
``{image, mask, group, index}`` of random normalised images and random masks (0..149, about 5%
ignored), then zero_grad, backward and the optimiser's step (the runner's ``Trainer.step``). The
batch stays on the device: no data loading, no per-step ``float(loss)`` sync of the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from fair_core.data import DataInfo, Preprocessing
from fair_core.plugins import get_registry
from fair_core.spec import validate_params

NUM_CLASSES, IGNORE_INDEX = 150, 255
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
METHODS = ("erm", "zut")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50",
                        choices=["resnet18", "resnet34", "resnet50", "resnet101", "convnext_tiny", "convnext_small"])
    parser.add_argument("--deep-stem", action=argparse.BooleanOptionalAction, default=None,
                        help="mmseg's ResNetV1c stem (default: on for ResNets, as fpn_r50 on ADE20K)")
    parser.add_argument("--size", type=int, default=None, help="square crop (default 512; 256 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 16; 4 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed window (default 10; 1 on CPU)")
    parser.add_argument("--windows", type=int, default=None, help="timed windows, median taken (default 5; 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 1 on CPU)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (cuda only)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    return parser.parse_args()


def resolve_settings(args: argparse.Namespace) -> tuple[torch.device, list[str]]:
    """Fills in the defaults; returns the settings that took the small CPU default."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if args.amp and not use_cuda:
        raise SystemExit("--amp is bf16 autocast on cuda; this run is on the CPU")
    gpu = {"size": 512, "batch": 16, "steps": 10, "windows": 5, "warmup": 5}
    cpu = {"size": 256, "batch": 4, "steps": 1, "windows": 3, "warmup": 1}
    small = [key for key in gpu if getattr(args, key) is None] if not use_cuda else []
    for key, value in gpu.items():  # on the CPU every setting not given takes the small CPU default
        if getattr(args, key) is None:
            setattr(args, key, cpu[key] if not use_cuda else value)
    if args.deep_stem is None:
        args.deep_stem = args.backbone.startswith("resnet")
    return device, small


def build(method_name: str, args, info: DataInfo, task, device: torch.device):
    """Method, model and optimiser as the runner builds them (same seed for every method)."""
    registry = get_registry()
    model_entry = registry.get("models", "fpn", "model.name")
    builder = model_entry.obj(validate_params(model_entry.obj.Params,
                                              {"backbone": args.backbone, "deep_stem": args.deep_stem}, "model.params"))
    method_cls = registry.get("methods", method_name, "method.name").obj
    method = method_cls(validate_params(method_cls.Params, {}, "method.params"), info, task)
    torch.manual_seed(0)
    model = method.build_model(builder.build(info.num_classes)).to(device)

    def make_optimizer(parameters, lr=None):
        return torch.optim.AdamW(parameters, lr=args.lr if lr is None else lr, weight_decay=args.weight_decay)

    optimizers = method.configure_optimizers(model, make_optimizer)
    return method, model, optimizers[0]


def random_batch(args, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    mask = torch.randint(0, NUM_CLASSES, (b, s, s), generator=generator)
    mask[torch.rand(b, s, s, generator=generator) < 0.05] = IGNORE_INDEX
    batch = {"image": torch.randn(b, 3, s, s, generator=generator), "mask": mask,
             "group": torch.zeros(b, dtype=torch.long), "index": torch.arange(b)}
    return {k: v.to(device) for k, v in batch.items()}


def main() -> None:
    args = parse_args()
    device, small = resolve_settings(args)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    registry = get_registry()
    task_cls = registry.get("tasks", "segmentation", "task").obj
    task = task_cls(validate_params(task_cls.EvalParams, {}, "eval.params"))
    info = DataInfo(dataset="random", target="mask", sensitive=(), class_names=tuple(f"class{k}" for k in range(NUM_CLASSES)),
                    group_names=("all",), preprocessing=Preprocessing(args.size, *IMAGENET), ignore_index=IGNORE_INDEX)
    runs = {name: build(name, args, info, task, device) for name in METHODS}
    batch = random_batch(args, device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def train_step(name: str) -> None:
        method, model, optimizer = runs[name]
        with autocast():
            loss = method.compute_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_step(name: str) -> None:
        method, model, _ = runs[name]
        with torch.no_grad(), autocast():
            method.predict(model, batch["image"]).float()

    results: dict[tuple[str, str], tuple[float, float | None]] = {}
    for mode, step in (("train", train_step), ("eval", eval_step)):
        for _, model, _ in runs.values():
            model.train(mode == "train")
        for name in METHODS:  # warmup (cudnn.benchmark tunes each shape: B, B + 1 and 1 for zut)
            for _ in range(args.warmup):
                step(name)
        sync()
        rates: dict[str, list[float]] = {name: [] for name in METHODS}
        peaks: dict[str, float] = {name: 0.0 for name in METHODS}
        for _ in range(args.windows):  # interleaved, so drifts of the machine hit every method alike
            for name in METHODS:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                sync()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(name)
                sync()
                rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
                if cuda:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**30)
        for name in METHODS:
            results[mode, name] = statistics.median(rates[name]), peaks[name] if cuda else None

    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()} "
          f"(interop {torch.get_num_interop_threads()})"
          + (f"; cudnn.benchmark on; bf16 autocast {'on' if args.amp else 'off'}" if cuda else ""))
    stem = ", deep stem" if args.deep_stem else ""
    print(f"fpn {args.backbone}{stem}, {NUM_CLASSES} classes, {args.size}x{args.size}, batch {args.batch}; "
          f"median of {args.windows} windows of {args.steps} steps after {args.warmup} warmup steps; AdamW")
    if small:
        print(f"(on the CPU, small defaults for {', '.join('--' + k for k in small)}; the full setting, "
              f"as on a GPU: --size 512 --batch 16 --steps 10 --windows 5 --warmup 5)")
    expected_train = (args.batch + 1) / args.batch
    header = f"{'mode':<6} {'method':<6} {'images/s':>9} {'x erm':>7} {'time/erm':>9} {'expected':>9}"
    print(header + (f" {'peak GiB':>9}" if cuda else ""))
    print("-" * (len(header) + (10 if cuda else 0)))
    for (mode, method), (rate, peak) in results.items():
        erm = results[mode, "erm"][0]
        expected = expected_train if mode == "train" and method == "zut" else 1.0
        line = f"{mode:<6} {method:<6} {rate:>9.2f} {rate / erm:>7.3f} {erm / rate:>9.3f} {expected:>9.3f}"
        print(line + (f" {peak:>9.2f}" if cuda else ""))
    print("images/s: real images (zut's zero image not counted); x erm: images/s over erm's; "
          "time/erm: time per image over erm's")
    print(f"expected: (B+1)/B = {expected_train:.3f} for zut's training step (its zero image through the "
          f"backbone; the head's extra call on it comes on top), 1 otherwise (in eval mode zut's hooks do nothing)")


if __name__ == "__main__":
    main()
