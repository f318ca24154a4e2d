"""`fair run` end to end: outputs, their consistency, and resuming a killed run."""

import csv
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAIR, small_spec
from fair_core import metrics as M
from fair_core.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    spec_path = out.parent / "spec.json"
    spec_path.write_text(json.dumps(small_spec(out)))
    result = subprocess.run([*FAIR, "run", str(spec_path), "--set", "train.epochs=3"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_writes_the_output_contract(finished_run):
    out, result = finished_run
    for name in ("metrics.json", "model.safetensors", "config.json", "predictions.csv", "log.jsonl", "checkpoint.safetensors"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp")), "no temporary file may remain"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spec"]["train"]["epochs"] == 3  # the override is recorded
    assert set(metrics["fairness"]) >= {"accuracy_gap", "worst_group_accuracy", "spd", "deo", "eod", "aaod"}
    assert 0.0 <= metrics["overall"]["accuracy"] <= 1.0 and metrics["overall"]["n"] == 200
    assert [g["group"] for g in metrics["groups"]] == ["colour", "grayscale"]
    assert sum(g["n"] for g in metrics["groups"]) == 200
    assert set(metrics["intervals"]) == set(metrics["fairness"]) | set(metrics["overall"]) - {"n"}  # every metric
    assert all(lo <= hi for lo, hi in metrics["intervals"].values())
    for name in ("accuracy", "balanced_accuracy"):  # (a max - min gap may lie below its percentile interval)
        lo, hi = metrics["intervals"][name]
        assert lo <= metrics["overall"][name] <= hi
    # the per-group table is printed
    assert "colour" in result.stdout and "grayscale" in result.stdout and "accuracy_gap" in result.stdout
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "epoch" in r] == [1, 2, 3]


def test_predictions_csv_recomputes_metrics_json(finished_run):
    out, _ = finished_run
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 200
    assert set(rows[0]) == {"index", "target", "color", "group", "prediction", "score_square", "score_circle"}
    preds = torch.tensor([int(r["prediction"]) for r in rows])
    targets = torch.tensor([int(r["target"]) for r in rows])
    groups = torch.tensor([int(r["group"]) for r in rows])
    assert all((r["color"] == "grayscale") == (r["group"] == "1") for r in rows)
    counts = M.group_confusion(preds, targets, groups, 2, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert M.accuracy(counts).item() == pytest.approx(metrics["overall"]["accuracy"])
    assert M.equalized_odds_difference(counts).item() == pytest.approx(metrics["fairness"]["eod"])
    assert M.statistical_parity_difference(counts).item() == pytest.approx(metrics["fairness"]["spd"])


def test_model_files_rebuild_the_model_without_pickle(finished_run):
    out, _ = finished_run
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "small_cnn" and config["num_classes"] == 2
    assert config["data"]["class_names"] == ["square", "circle"]
    from fair_core.models import SmallCNN

    model = SmallCNN(SmallCNN.Params(**config["model"]["params"])).build(config["num_classes"])
    model.load_state_dict(load_file(out / "model.safetensors"))
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    assert checkpoint["epoch"] == 2 and checkpoint["post_trained"] is True
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["model"][key]), key


def _fairness(path):
    metrics = json.loads((path / "metrics.json").read_text())
    return metrics["overall"], metrics["groups"], metrics["fairness"], metrics["intervals"]


def test_killed_run_resumes_to_the_same_metrics(tmp_path, write_spec):
    spec = small_spec(tmp_path / "x", data={"name": "synthetic", "params": {"train_size": 2000, "test_size": 200, "image_size": 24}},
                      train={"epochs": 5, "batch_size": 32, "lr": 0.002, "seed": 3, "optimizer": "sgd", "scheduler": "multistep"})
    path = write_spec(spec)
    reference = tmp_path / "reference"
    done = subprocess.run([*FAIR, "run", str(path), "--output-dir", str(reference)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen([*FAIR, "run", str(path), "--output-dir", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.safetensors").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run must be killed before it finishes"
    stopped_at = load_checkpoint(killed / "checkpoint.safetensors")["epoch"]
    assert stopped_at < 4

    resumed = subprocess.run([*FAIR, "run", str(path), "--output-dir", str(killed), "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert _fairness(killed) == _fairness(reference)
    assert (killed / "predictions.csv").read_text() == (reference / "predictions.csv").read_text()


def test_resume_refuses_a_different_spec(tmp_path, write_spec):
    spec = small_spec(tmp_path / "out", train={"epochs": 1})
    assert subprocess.run([*FAIR, "run", str(write_spec(spec))], capture_output=True, timeout=300).returncode == 0
    changed = subprocess.run([*FAIR, "run", str(write_spec(spec)), "--resume", "--set", "train.lr=0.5"],
                             capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "spec differs" in changed.stderr
