"""MixFairFace's instance-level protocol (`rfw_val_inst`): block-wise vs dense vs the GEMM floor.

Random 512-d unit embeddings planted around one centre per identity (40,000 images in 12,000
identities by default, RFW's size). Each measurement runs in a fresh Python process and reports
its wall time and the process's peak resident memory (``resource.getrusage``: it sees torch's
allocations, which tracemalloc does not), also less the process's peak before the measured call
(Python, torch and the embeddings). Measured, all in one run:

* ``gemm``: the similarity matrix ``S = F F^T`` in blocks of rows into one buffer, nothing else:
  the floor of any exact protocol (each of the N^2 similarities must be computed once);
* ``block-wise``: :func:`fair_face.val_inst.instance_rates` (threshold, per-image counts,
  per-identity rates, intra- and inter-identity similarity);
* ``dense``: the original's dense N x N matrices (similarity, ground truth, predictions; the exact
  k-th largest negative instead of its bisection), at a size this machine holds.

Each measurement runs ``--repeats`` times, interleaved with the others; the best time is kept (the
machine may be shared). Targets: block-wise at most 2 GB peak at 40,000 images and at most 1.5x
the GEMM floor.

    python bench/val_inst.py [--n 40000] [--identities 12000] [--dense-n 10000] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

GIB = 2**30


def planted(n: int, identities: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit embeddings near one random centre per identity (every identity has an image), 4 races."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(identities), torch.randint(0, identities, (n - identities,), generator=generator)])
    labels = labels[torch.randperm(n, generator=generator)]
    centres = F.normalize(torch.randn(identities, dim, generator=generator), dim=1)
    # noise 2x the centre's norm: genuine cosines ~0.2, near the threshold of FPR 1e-5, so the TPR varies
    embeddings = F.normalize(centres[labels] + 2.0 * torch.randn(n, dim, generator=generator) / math.sqrt(dim), dim=1)
    return embeddings, labels, labels % 4


def gemm_floor(embeddings: torch.Tensor, block_size: int) -> float:
    n = embeddings.shape[0]
    buffer = embeddings.new_empty(min(block_size, n), n)
    checksum = 0.0
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        torch.mm(embeddings[start:stop], embeddings.T, out=buffer[: stop - start])
        checksum += float(buffer[0, 0])
    return checksum


def block_wise(embeddings, labels, groups, block_size: int):
    from fair_face.val_inst import VAL_INST_FPR, instance_rates

    rates = instance_rates(embeddings, labels, groups, VAL_INST_FPR, block_size)
    kept = rates.kept
    return rates.threshold, rates.identity_tpr[kept].std(correction=0).item(), rates.identity_fpr[kept].std(correction=0).item()


def dense(embeddings, labels, groups, block_size: int):
    """The original's formulas on full N x N matrices (self-match removed, exact threshold)."""
    from fair_face.val_inst import VAL_INST_FPR

    n = labels.numel()
    similarity = (embeddings @ embeddings.T).clamp_(-1, 1)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    negatives = similarity[~same]
    k = max(1, math.ceil(VAL_INST_FPR * negatives.numel()))
    threshold = negatives.topk(k).values[k - 1]
    del negatives
    accepted = similarity > threshold
    same.fill_diagonal_(False)  # the self-match is no positive
    tp, fn = (accepted & same).sum(1), (~accepted & same).sum(1)
    same.fill_diagonal_(True)
    fp, tn = (accepted & ~same).sum(1), (~accepted & ~same).sum(1)
    sizes = torch.bincount(labels)
    kept = sizes >= 2
    tpr = torch.zeros(sizes.numel(), dtype=torch.float64).index_add_(0, labels, tp.double() / (tp + fn).clamp_min(1))
    fpr = torch.zeros(sizes.numel(), dtype=torch.float64).index_add_(0, labels, fp.double() / (fp + tn))
    tpr, fpr = (tpr / sizes)[kept], (fpr / sizes)[kept]
    return float(threshold), tpr.std(correction=0).item(), fpr.std(correction=0).item(), n


def measure(kind: str, n: int, identities: int, dim: int, block_size: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    embeddings, labels, groups = planted(n, identities, dim)
    import fair_face.operating_point  # noqa: F401  (imports before the baseline)
    import fair_face.val_inst  # noqa: F401

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    function = {"gemm": gemm_floor, "block-wise": block_wise, "dense": dense}[kind]
    arguments = (embeddings, block_size) if kind == "gemm" else (embeddings, labels, groups, block_size)
    start = time.perf_counter()
    result = function(*arguments)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": kind, "n": n, "seconds": seconds, "peak": peak, "baseline": baseline, "result": repr(result)}


def measure_once(kind: str, n: int, args) -> dict:
    command = [sys.executable, __file__, "--measure", kind, "--n", str(n), "--identities", str(args.identities * n // args.n),
               "--dim", str(args.dim), "--block-size", str(args.block_size), "--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure_all(kinds: tuple[str, ...], n: int, args) -> dict[str, dict]:
    """Each kind ``args.repeats`` times, interleaved (a busy spell of the machine hits all kinds
    alike); the best time and the largest peak of each."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            runs[kind].append(measure_once(kind, n, args))
    rows = {}
    for kind, measured in runs.items():
        row = {**measured[0], "seconds": min(r["seconds"] for r in measured), "peak": max(r["peak"] for r in measured),
               "baseline": min(r["baseline"] for r in measured)}
        times = ", ".join(f"{r['seconds']:.2f}" for r in measured)
        print(f"{kind:>10} | {n:>7,} | {row['seconds']:>8.2f} | {row['peak'] / GIB:>8.2f} | "
              f"{(row['peak'] - row['baseline']) / GIB:>9.2f} | {times:<20} | {row['result']}", flush=True)
        rows[kind] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--identities", type=int, default=12_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dense-n", type=int, default=10_000)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (best time reported)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.n, args.identities, args.dim, args.block_size, args.threads)))
        return
    print(f"{args.n:,} x {args.dim} embeddings in {args.identities:,} identities (and {args.dense_n:,} in identities "
          f"scaled alike); blocks of {args.block_size} rows; {args.threads} threads; FPR 1e-5; best of {args.repeats}\n")
    print(f"{'':>10} | {'images':>7} | {'time (s)':>8} | {'peak GiB':>8} | {'+ GiB run':>9} | {'times (s)':<20} | result")
    small = measure_all(("gemm", "block-wise", "dense"), args.dense_n, args)
    large = measure_all(("gemm", "block-wise"), args.n, args)
    print()
    dense_run = small["dense"]["peak"] - small["dense"]["baseline"]
    block_run = small["block-wise"]["peak"] - small["block-wise"]["baseline"]
    print(f"at {args.dense_n:,}: block-wise / GEMM floor time {small['block-wise']['seconds'] / small['gemm']['seconds']:.2f}x; "
          f"dense / block-wise time {small['dense']['seconds'] / small['block-wise']['seconds']:.2f}x, "
          f"run memory {dense_run / max(1, block_run):.1f}x")
    print(f"dense run memory scaled to {args.n:,} (x{(args.n / args.dense_n) ** 2:.0f}): "
          f"{dense_run * (args.n / args.dense_n) ** 2 / GIB:.1f} GiB")
    ratio = large["block-wise"]["seconds"] / large["gemm"]["seconds"]
    peak = large["block-wise"]["peak"]
    print(f"at {args.n:,}: block-wise / GEMM floor time {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'}); "
          f"peak {peak / GIB:.2f} GiB = {peak / 1e9:.2f} GB (target <= 2 GB: {'met' if peak <= 2e9 else 'NOT met'})")


if __name__ == "__main__":
    main()
