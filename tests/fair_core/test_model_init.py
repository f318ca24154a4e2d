"""Fine-tuning: model.init names a finished run (or Hub id) whose weights start the training."""

import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAIR, small_spec
from fair_core.runner import run
from fair_core.spec import parse_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("init") / "erm"
    run(parse_spec(small_spec(folder, train={"epochs": 1}, eval={"bootstrap": 0})))
    return folder


def test_the_run_starts_from_the_named_model_weights(tmp_path, trained):
    # Adam moves each weight by about lr per step: at lr 1e-9 the fine-tuned weights stay within
    # 1e-7 of where they started, which must be the named run's, not a fresh initialisation
    start = load_file(trained / "model.safetensors")
    spec = small_spec(tmp_path / "tuned", model={"init": str(trained)}, train={"epochs": 1, "lr": 1e-9, "seed": 1},
                      eval={"bootstrap": 0})
    run(parse_spec(spec))
    tuned = load_file(tmp_path / "tuned" / "model.safetensors")
    fresh = small_spec(tmp_path / "fresh", train={"epochs": 1, "lr": 1e-9, "seed": 1}, eval={"bootstrap": 0})
    run(parse_spec(fresh))
    other = load_file(tmp_path / "fresh" / "model.safetensors")
    weights = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    assert weights and all(torch.allclose(tuned[k], start[k], atol=1e-7) for k in weights)
    assert not all(torch.allclose(other[k], start[k], atol=1e-3) for k in weights)


def test_a_model_that_does_not_fit_is_one_line_naming_model_init(tmp_path, trained, write_spec):
    spec = small_spec(tmp_path / "out", model={"name": "small_cnn", "params": {"width": 16}, "init": str(trained)})
    done = subprocess.run([*FAIR, "run", str(write_spec(spec))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: model.init: ") and "width" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
