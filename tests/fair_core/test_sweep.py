"""fair sweep: a 2 x 2 grid of tiny runs, its rerun after a kill, a failed cell, submitit, bad input."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import FAIR, small_spec
from fair_core import FairError
from fair_core.aggregate import aggregate, expand_run_dirs, read_runs
from fair_core.cli import app
from fair_core.sweep import cell_is_finished, load_sweep, run_sweep

TINY = {"params": {"train_size": 128, "val_size": 16, "test_size": 48, "image_size": 16}}
CELLS = ["method=erm,train.seed=0", "method=erm,train.seed=1", "method=uw,train.seed=0", "method=uw,train.seed=1"]


def write_sweep(folder: Path, out: Path, **extra) -> Path:
    base = small_spec(out, data=TINY, train={"epochs": 2}, eval={"bootstrap": 0})
    del base["output_dir"]
    sweep = {"base": base, "axes": {"method.name": ["erm", "uw"], "train.seed": {"range": [0, 2]}},
             "overrides": {"uw": {"train.epochs": 3}}, "output_dir": str(out), **extra}
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep(path: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*FAIR, "sweep", str(path), *args], capture_output=True, text=True, timeout=300, **kwargs)


def results(out: Path) -> dict:
    return {c: {k: v for k, v in json.loads((out / c / "metrics.json").read_text()).items()
                if k in ("overall", "fairness", "groups")} for c in CELLS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The cells' metrics of an uninterrupted sweep: each cell's spec run in this process."""
    from fair_core.runner import run
    from fair_core.spec import parse_spec

    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "reference"
    _, cells = load_sweep(write_sweep(folder, out))
    assert [c.name for c in cells] == CELLS
    for cell in cells:
        run(parse_spec(cell.spec))
    return out


def test_killed_sweep_resumes_without_redoing_finished_cells(reference, tmp_path):
    """The 2 x 2 sweep, killed (process group, SIGKILL) while its second cell runs, then rerun
    with --jobs 2: all cells finish, the finished one is not redone, the metrics are those of an
    uninterrupted sweep."""
    out = tmp_path / "killed"
    path = write_sweep(tmp_path, out)
    process = subprocess.Popen([*FAIR, "sweep", str(path), "--jobs", "1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not (out / CELLS[0] / "metrics.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    # the second cell is running (or starting): kill the whole sweep, its cells with it
    while not (out / CELLS[1] / "run.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / CELLS[0] / "metrics.json").exists()
    assert not (out / CELLS[3] / "metrics.json").exists()
    first = (out / CELLS[0] / "metrics.json").stat().st_mtime_ns
    again = sweep(path, "--jobs", "2")
    assert again.returncode == 0, again.stderr
    assert f"finished {CELLS[0]}" not in again.stdout  # skipped, not rerun
    assert (out / CELLS[0] / "metrics.json").stat().st_mtime_ns == first
    assert sum(f"finished {c}" in again.stdout for c in CELLS[1:]) == 3  # one line per finished cell
    assert results(out) == results(reference)
    manifest = json.loads((out / "sweep.json").read_text())
    assert sorted(manifest["cells"]) == CELLS and {c["state"] for c in manifest["cells"].values()} == {"finished"}
    for cell in CELLS:
        spec = json.loads((out / cell / "metrics.json").read_text())["spec"]
        assert spec["method"]["name"] == cell.split(",")[0].split("=")[1]
        assert spec["train"]["seed"] == int(cell[-1])
        assert spec["train"]["epochs"] == (3 if "uw" in cell else 2)  # the method's own recipe
    _, cells = load_sweep(path)
    assert all(cell_is_finished(c) for c in cells)  # a third run would have nothing to do


def test_failed_cell_is_recorded_and_the_others_finish(tmp_path):
    out = tmp_path / "failing"
    path = write_sweep(tmp_path, out, axes={"method.name": ["erm"], "train.seed": [0, 1]}, overrides={})
    broken = out / "method=erm,train.seed=1"
    broken.mkdir(parents=True)
    (broken / "checkpoint.safetensors").write_bytes(b"not a checkpoint")  # fails at run time, on --resume
    spec, cells = load_sweep(path)
    lines = []
    run_sweep(spec, cells, jobs=2, report=lines.append)
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    assert cells["method=erm,train.seed=0"]["state"] == "finished"
    assert cells["method=erm,train.seed=1"]["state"] == "failed"
    error = cells["method=erm,train.seed=1"]["error"]
    assert "checkpoint" in error and "\n" not in error
    # the comparison of the sweep reports the failed cell and aggregates the other
    runs, notes = expand_run_dirs([out])
    assert runs == [out / "method=erm,train.seed=0"]
    assert len(notes) == 1 and "method=erm,train.seed=1: failed" in notes[0] and "checkpoint" in notes[0]
    result = aggregate(read_runs(runs), ["accuracy"])
    assert len(result.groups) == 1 and result.groups[0].stats["accuracy"].n == 1
    # the failed run itself is still refused when named
    with pytest.raises(FairError, match="failed, not finished"):
        read_runs([broken])


def test_submitit_local_executor_runs_the_sweep(reference, tmp_path):
    submitit = pytest.importorskip("submitit", reason="submitit (fair-core[submitit]) is not installed")
    out = tmp_path / "submitit"
    spec, cells = load_sweep(write_sweep(tmp_path, out))
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=10)
    state = run_sweep(spec, cells, jobs=2, executor="submitit", submitit_executor=executor, report=lambda _: None)
    assert {c["state"] for c in state.values()} == {"finished"}
    assert results(out) == results(reference)


def test_bad_input_is_one_line_and_starts_nothing(tmp_path):
    out = tmp_path / "bad"
    for extra, field in (({"axis": {}}, "axis"),
                         ({"axes": {"method.name": ["erm", "nope"]}}, "method.name"),
                         ({"axes": {"method.params.alpha": [1]}}, "method.params"),
                         ({"overrides": {"us": {"train.epochs": 2}}}, "overrides"),
                         ({"axes": {"output_dir": ["a"]}}, "output_dir"),
                         ({"axes": {"train.seed": {"range": [3, 3]}}}, "axes.train.seed")):
        with pytest.raises(FairError, match=field.replace(".", r"\.")):
            load_sweep(write_sweep(tmp_path, out, **extra))
    done = sweep(write_sweep(tmp_path, out, axes={"train.epochs": [0]}))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "train.epochs" in done.stderr
    assert not out.exists()
    dry = CliRunner().invoke(app, ["sweep", str(write_sweep(tmp_path, out)), "--dry-run"])
    assert dry.exit_code == 0 and "4 cells" in dry.stdout and "overrides" in dry.stdout and not out.exists()
