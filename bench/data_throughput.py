"""Image loading throughput: images/s through a DataLoader for the same JPEG faces read from a
folder, from a zip on disk, from a zip held in memory, and from a `datasets` dataset
(save_to_disk), at 64 and 224 px. Ratios are against the folder, measured in the same run.

    python bench/data_throughput.py [--images 2000] [--workers 2] [--repeats 3]

The images are generated here (UTKFace-style names, 200x200 JPEGs of smooth random content, so
their size is like real faces'), and read through the real loaders (utkface and hf).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from fair_core.runner import _collate  # noqa: E402
from fair_data.huggingface import HuggingFace  # noqa: E402
from fair_data.utkface import UTKFace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_faces(folder: Path, count: int) -> list[tuple[str, int, int]]:
    """``count`` 200x200 JPEGs named age_gender_race_date.jpg; returns (name, gender, race) rows."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:200] / 200.0
    rows = []
    for i in range(count):
        a, b, c = rng.uniform(0, 6, 3)
        base = np.stack([np.sin(a * xx + b * yy + k * c) for k in range(3)], -1) * 100 + 128
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        gender, race = int(rng.integers(2)), int(rng.integers(5))
        name = f"{25 + i % 50}_{gender}_{race}_2017{i:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        rows.append((name, gender, race))
    return rows


def build_sources(tmp: Path, count: int):
    folder = tmp / "UTKFace"
    rows = write_faces(folder, count)
    with zipfile.ZipFile(tmp / "UTKFace.zip", "w", compression=zipfile.ZIP_STORED) as archive:  # JPEGs do not deflate
        for name, _, _ in rows:
            archive.write(folder / name, f"UTKFace/{name}")
    import datasets

    features = datasets.Features({"image": datasets.Image(), "gender": datasets.ClassLabel(names=["Male", "Female"]),
                                  "race": datasets.ClassLabel(names=["White", "Black", "Asian", "Indian", "Others"])})
    table = {"image": [{"bytes": (folder / n).read_bytes(), "path": n} for n, _, _ in rows],  # JPEG bytes in the table
             "gender": [g for _, g, _ in rows], "race": [r for _, _, r in rows]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table, features=features)}).save_to_disk(str(tmp / "hf"))

    def utkface(size, store):
        return UTKFace(UTKFace.Params(root=folder, image_size=size, image_store=store, age_groups="bins")).load("train", None, None)

    def hf(size):
        params = HuggingFace.Params(path=str(tmp / "hf"), attributes=["gender", "race"], splits={"train": "train"}, image_size=size)
        return HuggingFace(params).load("train", None, None)

    return {
        "folder": lambda size: utkface(size, "folder"),
        "zip": lambda size: utkface(size, "zip"),
        "zip_in_memory": lambda size: utkface(size, "zip_in_memory"),
        "datasets": hf,
    }


def images_per_second(dataset, workers: int, batch_size: int = 64) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, shuffle=False)
    start = time.perf_counter()
    seen = sum(len(batch["image"]) for batch in loader)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    lines = [f"# Data throughput: {args.images} JPEG faces (200x200), batch 64, {args.workers} workers, "
             f"median of {args.repeats}", "", "| store | size | images/s | vs folder |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        sources = build_sources(Path(tmp), args.images)
        for size in (64, 224):
            datasets = {name: make(size) for name, make in sources.items()}
            rates = {name: [] for name in datasets}
            for _ in range(args.repeats):  # interleaved, so drifts of the machine hit every store alike
                for name, dataset in datasets.items():
                    rates[name].append(images_per_second(dataset, args.workers))
            baseline = statistics.median(rates["folder"])
            for name, values in rates.items():
                rate = statistics.median(values)
                line = f"| {name} | {size} | {rate:.0f} | {rate / baseline:.2f}x |"
                lines.append(line)
                print(line, flush=True)
    out = ROOT / "bench/results/data_throughput.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
