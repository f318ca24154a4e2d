"""A run's output folder: one run at a time, never a silent overwrite, a record of what it holds.

* **Lock.** A run holds an exclusive lock on its folder (``.fair.lock``, through ``filelock``:
  an OS-level lock the kernel releases when the process dies, however it ends). A second run on
  the same folder exits 2 naming the folder and the holder (pid, host, start time).
* **Identity.** ``run.json`` records the run: the hash of the spec fields that determine its
  result (:func:`result_fields`), the method, dataset and task, the number of processes, and its
  state ``running`` / ``finished`` / ``failed`` (with the error line), written atomically at the
  start, the end and on failure. A ``fair evaluate`` records ``evaluation`` (the model and its
  source) instead of a method.
* **No silent overwrite.** A fresh run into a folder holding a run's files is refused unless the
  user passes ``--overwrite`` (which removes only the files a run writes, and its TensorBoard
  events) or ``--resume``.
* **Leftovers.** Temporary files of an interrupted atomic write (``.*.tmp``) are removed when the
  next run takes the lock.

With ``--num-processes N`` the command line claims the folder before starting the processes and
tells them (``FAIR_CLAIMED_OUTPUT_DIR``); under ``accelerate launch`` the main process claims it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .atomic import write_text
from .errors import FairError

LOCK_FILE = ".fair.lock"
RUN_FILE = "run.json"
TENSORBOARD_DIR = "fair"  # Accelerate's tracker run name: the runner's TensorBoard events
CLAIMED_ENV = "FAIR_CLAIMED_OUTPUT_DIR"  # set for the processes of a run whose folder is already claimed
RUN_FILES = (
    RUN_FILE, "config.json", "model.safetensors", "metrics.json", "checkpoint.safetensors", "log.jsonl",
    "predictions.csv", "embeddings.safetensors", "per_image.csv", "README.md",
)
"""The files a run writes: what marks a folder as holding a run, and what ``--overwrite`` removes."""

# fields that do not change what a run trains and evaluates to: where it writes, how it logs and
# loads data, whether it pushes; the eval section only changes the report of a trained model
_NOT_RESULT = ("output_dir", "hub", "eval", "train.num_workers", "train.log_every")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat if flat or not prefix else {prefix: {}}
    return {prefix: value}


def result_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's fields that determine the trained model (flattened ``section.field`` keys)."""
    return {k: v for k, v in _flat(spec).items()
            if not any(k == skip or k.startswith(f"{skip}.") for skip in _NOT_RESULT)}


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(result_fields(spec), sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The result-determining fields in which two specs differ, as ``field: saved -> current``."""
    a, b = result_fields(saved), result_fields(current)
    return [f"{k}: {json.dumps(a.get(k), default=str)} -> {json.dumps(b.get(k), default=str)}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def is_main_process() -> bool:
    """Whether this process is the main one of its run (before any process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def read_record(folder: Path) -> dict[str, Any] | None:
    """``run.json`` of ``folder``, or ``None`` when absent or unreadable."""
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_state(folder: Path) -> str | None:
    """``finished``, ``failed``, ``running``, ``interrupted`` (recorded as running, but no process
    holds the lock: killed) or ``None`` (no run.json, e.g. a folder of an older version)."""
    state = (read_record(folder) or {}).get("state")
    if state == "running" and (folder / LOCK_FILE).exists():
        lock = FileLock(str(folder / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return "running"
        lock.release()
        return "interrupted"
    return state


class RunFolder:
    """The output folder of one run (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ claiming
    @contextmanager
    def claim(self, spec: dict[str, Any], resume: bool, overwrite: bool, world_size: int = 1,
              evaluation: dict[str, Any] | None = None) -> Iterator[None]:
        """Hold the folder for the block: lock it, refuse another run's files (unless ``resume``
        or ``overwrite``), clean leftovers, and record the run's state (``failed`` with the error
        line if the block raises, ``finished`` otherwise). ``evaluation`` (``{"model", "source"}``)
        marks a ``fair evaluate`` of a model the folder does not train."""
        if os.environ.get(CLAIMED_ENV) == str(self.path.resolve()) or not is_main_process():
            yield  # the launching command line (or the main process) holds it
            return
        self._make()
        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise FairError(f"output_dir: {self.path} is in use by another fair run ({self._holder()}); "
                            f"wait for it to end or choose another output_dir") from None
        try:
            self._refuse_another_run(spec, resume, overwrite)
            self._clean_leftovers()
            self._record(spec, "running", world_size, evaluation=evaluation)
            try:
                yield
            except BaseException as exc:
                reason = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
                self._record(spec, "failed", world_size, error=reason, evaluation=evaluation)
                raise
            self._record(spec, "finished", world_size, evaluation=evaluation)
        finally:
            lock.release()

    def _make(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FairError(f"output_dir: cannot write to {self.path}: {exc.strerror or exc}") from None

    def _holder(self) -> str:
        record = read_record(self.path) or {}
        if record.get("state") != "running":
            return "holder unknown"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("updated", 0)))
        return f"pid {record.get('pid')} on {record.get('host')}, since {started}"

    def _refuse_another_run(self, spec: dict[str, Any], resume: bool, overwrite: bool) -> None:
        present = [name for name in RUN_FILES if (self.path / name).exists() or (self.path / name).is_symlink()]
        if not present:
            return
        if overwrite:
            for name in present:
                (self.path / name).unlink()
            self._remove_tensorboard_logs()
            return
        record = read_record(self.path) or {}
        if resume and ((self.path / "checkpoint.safetensors").exists() or record.get("spec_hash") == spec_hash(spec)):
            return  # resuming this run: the checkpoint's own check names any differing field
        evaluation = record.get("evaluation")
        evaluated = evaluation.get("model") if isinstance(evaluation, dict) else None
        if "state" in record:
            what = (f"a {record['state']} evaluation ({evaluated} on {record.get('dataset')})" if evaluated
                    else f"a {record['state']} run ({record.get('method')} on {record.get('dataset')})")
        else:
            what = f"a run's files ({', '.join(present[:3])})"
        raise FairError(f"output_dir: {self.path} holds {what}; pass --overwrite to replace it, --resume to "
                        f"continue it, or choose another output_dir")

    def _remove_tensorboard_logs(self) -> None:
        """The previous run's TensorBoard logs (``fair/``, Accelerate's run name: event files and
        ``hparams.yml``), so that its curves do not mix with the new run's; a folder holding
        anything else is kept."""
        logs = self.path / TENSORBOARD_DIR
        if logs.is_dir() and not logs.is_symlink():
            files = [f for f in logs.rglob("*") if not f.is_dir()]
            if all((f.name.startswith("events.out.tfevents.") or f.name == "hparams.yml") and not f.is_symlink()
                   for f in files):
                shutil.rmtree(logs)

    def _clean_leftovers(self) -> None:
        for leftover in self.path.glob(".*.tmp"):
            if leftover.is_file() or leftover.is_symlink():
                leftover.unlink(missing_ok=True)

    def _record(self, spec: dict[str, Any], state: str, world_size: int, error: str | None = None,
                evaluation: dict[str, Any] | None = None) -> None:
        record = {
            "state": state, "spec_hash": spec_hash(spec), "task": spec.get("task"),
            "method": spec.get("method", {}).get("name"), "dataset": spec.get("data", {}).get("name"),
            **({"evaluation": evaluation} if evaluation is not None else {}),
            "world_size": world_size, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time(),
            **({"error": error} if error else {}),
        }
        try:
            write_text(self.path / RUN_FILE, json.dumps(record, indent=2))
        except OSError as exc:
            if state == "running":
                raise FairError(f"output_dir: cannot write to {self.path}: {exc.strerror or exc}") from None
