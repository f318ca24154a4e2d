"""The output folder holds one run: a lock against concurrent runs, no silent overwrite of another
run, no write through a planted symlink, normal permissions, a record of the run's state, and a
resume that names what differs."""

import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from conftest import FAIR, small_spec, write_utkface
from fair_core.checkpoint import load_checkpoint, save_checkpoint

ENV = {**os.environ, "TQDM_DISABLE": "1"}


def fair(*args, timeout=600):
    return subprocess.run([*FAIR, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def one_line(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def quick(out, **train):
    return small_spec(out, train={"epochs": 1, **train}, eval={"bootstrap": 0},
                      data={"name": "synthetic", "params": {"train_size": 200, "val_size": 40, "test_size": 60, "image_size": 16}})


def test_a_second_run_on_a_folder_in_use_exits_2_and_the_first_finishes_intact(tmp_path, write_spec):
    out = tmp_path / "out"
    first_spec = write_spec(small_spec(out, train={"epochs": 60}, eval={"bootstrap": 0},
                                       data={"name": "synthetic", "params": {"train_size": 600, "image_size": 16}}), "a.json")
    first = subprocess.Popen([*FAIR, "run", str(first_spec)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "run.json").exists():
        time.sleep(0.05)
    second = fair("run", str(write_spec(quick(out, lr=0.01), "b.json")), "--overwrite")
    line = one_line(second, f"output_dir: {out} is in use by another fair run", f"pid {first.pid}")
    assert "wait for it" in line
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spec"]["train"]["epochs"] == 60  # the first run's results, not the second's
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    assert all(json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())  # no partial line


def test_a_folder_holding_another_run_is_refused_unless_overwrite(tmp_path, write_spec):
    out = tmp_path / "out"
    assert fair("run", str(write_spec(quick(out), "a.json"))).returncode == 0
    before = (out / "metrics.json").read_bytes()
    refused = fair("run", str(write_spec(quick(out, lr=0.01), "b.json")))
    one_line(refused, f"output_dir: {out} holds a finished run (erm on synthetic)", "--overwrite", "--resume")
    assert (out / "metrics.json").read_bytes() == before
    again = fair("run", str(write_spec(quick(out), "a.json")))  # the same spec again is a rerun: refused too
    assert again.returncode == 2
    (out / "fair" / "old").mkdir(parents=True, exist_ok=True)
    (out / "fair" / "old" / "events.out.tfevents.1.host").write_bytes(b"previous run's curves")
    replaced = fair("run", str(write_spec(quick(out, lr=0.01), "b.json")), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "fair" / "old").exists()
    assert json.loads((out / "metrics.json").read_text())["spec"]["train"]["lr"] == 0.01


def test_a_planted_symlink_is_never_written_through(tmp_path, write_spec):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").symlink_to(victim)
    spec = write_spec(quick(out))
    one_line(fair("run", str(spec)), "holds a run's files (log.jsonl)")
    assert fair("run", str(spec), "--overwrite").returncode == 0  # the link is removed, not followed
    assert victim.read_text() == "precious" and not (out / "log.jsonl").is_symlink()
    (out / "log.jsonl").unlink()
    (out / "log.jsonl").symlink_to(victim)  # planted in a finished run's folder, then resumed
    line = one_line(fair("run", str(spec), "--resume"), "log.jsonl", "symlink")
    assert "cannot write" in line and victim.read_text() == "precious"


def test_outputs_get_normal_permissions_and_leftover_temporary_files_are_removed(tmp_path, write_spec):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".metrics.json.abc123.tmp").write_text("half written")
    old_umask = os.umask(0o022)
    try:
        assert fair("run", str(write_spec(quick(out)))).returncode == 0
    finally:
        os.umask(old_umask)
    for name in ("metrics.json", "config.json", "model.safetensors", "checkpoint.safetensors", "log.jsonl", "run.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert not list(out.glob(".*.tmp"))


def test_the_folder_records_a_failed_run_and_its_reason(tmp_path, write_spec):
    root = write_utkface(tmp_path / "UTKFace", 20)
    (root / "25_1_0_20170119999.jpg").write_bytes(b"")  # found before training, once the folder is claimed
    out = tmp_path / "out"
    spec = small_spec(out, data={"name": "utkface", "params": {"root": str(root), "image_size": 12}},
                      train={"epochs": 1}, eval={"bootstrap": 0, "split": "train"})
    assert fair("run", str(write_spec(spec))).returncode == 2
    record = json.loads((out / "run.json").read_text())
    assert record["state"] == "failed" and "unreadable" in record["error"] and record["method"] == "erm"


def test_resume_from_a_moved_folder_and_with_new_evaluation_settings_finishes_the_run(tmp_path, write_spec):
    out = tmp_path / "out"
    spec = write_spec(quick(out))
    assert fair("run", str(spec)).returncode == 0
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    resumed = fair("run", str(spec), "--output-dir", str(moved), "--resume", "--set", "eval.bootstrap=20")
    assert resumed.returncode == 0, resumed.stderr
    assert "intervals" in json.loads((moved / "metrics.json").read_text())


def test_resume_names_the_fields_that_differ(tmp_path, write_spec):
    out = tmp_path / "out"
    spec = write_spec(quick(out))
    assert fair("run", str(spec)).returncode == 0
    one_line(fair("run", str(spec), "--resume", "--set", "train.lr=0.5", "--set", "model.params.width=4"),
             "--resume: the spec differs", "train.lr: 0.002 -> 0.5", "model.params.width: 8 -> 4")


@pytest.mark.parametrize("change,needle", [
    ({"epoch": 10**6}, "epoch is 1000000, outside [0, 1)"),
    ({"epoch": -3}, "epoch is -3, outside [0, 1)"),
    ({"world_size": 2}, "was written by a run of 2 process(es), this run has 1; resume with --num-processes 2"),
])
def test_resume_refuses_a_checkpoint_the_run_cannot_continue(tmp_path, write_spec, change, needle):
    out = tmp_path / "out"
    spec = write_spec(quick(out))
    assert fair("run", str(spec)).returncode == 0
    state = load_checkpoint(out / "checkpoint.safetensors")
    save_checkpoint(out / "checkpoint.safetensors", {**state, **change})
    one_line(fair("run", str(spec), "--resume"), needle)


def test_compare_tells_a_run_that_has_not_finished(tmp_path, write_spec):
    out = tmp_path / "out"
    assert fair("run", str(write_spec(quick(out)))).returncode == 0
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "state": "failed", "error": "killed"}))
    one_line(fair("compare", str(out)), f"{out}: the run there is failed, not finished")


def test_compare_tells_a_killed_run(tmp_path, write_spec):
    out = tmp_path / "out"
    assert fair("run", str(write_spec(quick(out)))).returncode == 0
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "state": "running"}))  # as a SIGKILL leaves it
    one_line(fair("compare", str(out)), "the run there is interrupted, not finished")
