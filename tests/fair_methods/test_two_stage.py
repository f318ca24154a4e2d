"""The two-stage methods through `fair run`: a run killed in stage 2 resumes without retraining
stage 1 and ends where an uninterrupted run does; the README's methods table lists them."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import FAIR, ROOT, small_spec
from fair_core.checkpoint import load_checkpoint
from fair_core.plugins import get_registry

TWO_STAGE = ("mfd", "fdr", "fair_reprogram", "faap")


def _results(path):
    metrics = json.loads((path / "metrics.json").read_text())
    return metrics["overall"], metrics["groups"], metrics["fairness"], (path / "predictions.csv").read_text()


def test_a_run_killed_in_stage_two_resumes_without_retraining_stage_one(tmp_path, write_spec):
    spec = small_spec(tmp_path / "x", data={"name": "synthetic", "params": {"train_size": 2000, "test_size": 200, "image_size": 24}},
                      method={"name": "fair_reprogram", "params": {"epochs": 5, "batch_size": 32, "lam": 1.0}},
                      train={"epochs": 2, "batch_size": 64, "seed": 3}, eval={"bootstrap": 0})
    path = write_spec(spec)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    reference = tmp_path / "reference"
    done = subprocess.run([*FAIR, "run", str(path), "--output-dir", str(reference)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen([*FAIR, "run", str(path), "--output-dir", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (killed / "checkpoint.safetensors").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)  # stage 2's first checkpoint: stage 1 has finished
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists() and (killed / "base" / "metrics.json").exists()
    assert load_checkpoint(killed / "checkpoint.safetensors")["epoch"] < 4
    stage_one = {name: (killed / "base" / name).stat().st_mtime_ns
                 for name in ("model.safetensors", "checkpoint.safetensors", "log.jsonl", "metrics.json")}

    resumed = subprocess.run([*FAIR, "run", str(path), "--output-dir", str(killed), "--resume"], capture_output=True,
                             text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {name: (killed / "base" / name).stat().st_mtime_ns for name in stage_one} == stage_one
    assert _results(killed) == _results(reference)
    assert _results(killed / "base") == _results(reference / "base")


def test_a_bad_method_parameter_is_refused_before_stage_one(tmp_path, write_spec):
    spec = small_spec(tmp_path / "out", method={"name": "fair_reprogram", "params": {"size": 24}},
                      data={"params": {"train_size": 64, "test_size": 16, "image_size": 24}})
    done = subprocess.run([*FAIR, "run", str(write_spec(spec))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: method.params.size"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "base").exists()


@pytest.mark.parametrize("name", TWO_STAGE)
def test_two_stage_methods_are_registered_listed_and_have_an_example(name):
    method = get_registry().get("methods", name).obj
    assert method.two_stage and "base" in method.Params.model_fields
    assert f"| `{name}` |" in (ROOT / "README.md").read_text()
    example = json.loads((ROOT / "examples" / f"{name}.json").read_text())
    assert example["method"]["name"] == name
