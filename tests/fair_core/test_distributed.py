"""Two processes (gloo on CPU) give the same evaluation as one process on the same weights."""

import csv
import json
import os
import subprocess

import pytest
import torch

from conftest import FAIR, small_spec
from fair_core import metrics as M
from fair_core.hub import from_pretrained
from fair_core.plugins import get_registry


@pytest.mark.parametrize("method", [
    {"name": "erm"}, {"name": "os"},
    # two-stage: stage 1 (erm in out/base) and stage 2 in one command, on the same process group
    {"name": "faap", "params": {"epochs": 1, "batch_size": 32, "generator_width": 4}},
], ids=lambda m: m["name"])
def test_two_process_run_matches_one_process_evaluation(tmp_path, write_spec, method):
    # 202 test images, eval batches of 16: the last batch of one process is padded by duplicates
    spec = small_spec(tmp_path / "out", method=method, train={"epochs": 1, "batch_size": 32},
                      data={"name": "synthetic", "params": {"train_size": 400, "test_size": 202, "image_size": 24}},
                      eval={"bootstrap": 0, "batch_size": 16})
    result = subprocess.run([*FAIR, "run", str(write_spec(spec)), "--num-processes", "2"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("accuracy by group") == 1  # one main process reports
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(int(r["index"]) for r in rows) == list(range(202))  # every sample once, padding dropped

    model = from_pretrained(out)  # the same weights, evaluated in this single process
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    test = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"]).load("test", None, None)
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.no_grad():
        preds = model(images).argmax(1)
    counts = M.group_confusion(preds, test.targets, test.groups, 2, 2)
    assert [g["n"] for g in metrics["groups"]] == counts.sum((1, 2)).tolist()
    assert [g["accuracy"] for g in metrics["groups"]] == pytest.approx(M.group_accuracy(counts).tolist(), abs=1e-12)
    assert metrics["fairness"]["eod"] == pytest.approx(M.equalized_odds_difference(counts).item(), abs=1e-12)
