"""`fair data stats`: the cell-count table of every split drawn as a figure."""

import re
import subprocess

from PIL import Image

from conftest import FAIR, small_spec


def test_stats_draws_every_split(write_spec, tmp_path):
    spec = write_spec(small_spec(tmp_path / "run", data={"name": "synthetic", "params": {
        "train_size": 400, "val_size": 40, "test_size": 80, "bias_ratio": 0.9}}))
    svg = tmp_path / "cells.svg"
    result = subprocess.run([*FAIR, "data", "stats", str(spec), "-o", str(svg)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    texts = re.findall(r">([^<]*)</text>", svg.read_text())
    for title in ("train: 400 images", "val: 40 images", "test: 80 images"):
        assert title in texts
    from fair_data.synthetic import Synthetic

    counts = Synthetic(Synthetic.Params(train_size=400, bias_ratio=0.9)).load("train", None, None).cell_counts()
    cells = [text for y in range(2) for g in range(2) for text in (
        str(int(counts[y, g])), f"{counts[y, g] / counts[y].sum():.0%}")]
    start = texts.index(cells[0])
    assert texts[start:start + len(cells)] == cells  # each train cell: its count, then its share of the class
    png = tmp_path / "cells.png"
    assert subprocess.run([*FAIR, "data", "stats", str(spec), "-o", str(png)], capture_output=True, timeout=300).returncode == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 400
    assert not list(tmp_path.glob(".cells*"))  # no temporary file left behind


def test_stats_rejects_unknown_format(write_spec, tmp_path):
    spec = write_spec(small_spec(tmp_path / "run"))
    result = subprocess.run([*FAIR, "data", "stats", str(spec), "-o", str(tmp_path / "cells.gif")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --output: unknown figure format '.gif'; allowed: .png, .pdf, .svg"
    assert not (tmp_path / "cells.gif").exists()
