"""``fair sweep``: one ordinary run per cell of a grid of run specs.

A sweep spec (:class:`SweepSpec`, JSON or YAML) holds a ``base`` run spec (inline, or the path of
a spec file relative to the sweep file), ``axes`` (dotted spec fields and the values each takes;
the cells are their cartesian product, in the order written) and per-method ``overrides``
(``{"us": {"train.epochs": 80}}``: applied after the axes to every cell of that method, so each
method keeps its own recipe). Every cell is checked (spec fields, plugins and their params) before
anything starts; bad input is one :class:`FairError` line.

Each cell is a run in ``<output_dir>/<cell name>/`` (``method=us,train.seed=1``), made by the
``fair run CELL_SPEC --resume`` command line in its own process (isolated: a crash, a leak or an
exit of one cell cannot touch another). A rerun of the sweep skips the cells whose ``run.json`` is
``finished`` with the cell's spec hash and resumes the others (a killed cell from its last
complete epoch). ``sweep.json`` at the sweep root records each cell's state and, for a failed one,
its one-line error; it is rewritten atomically after each change.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .atomic import write_text
from .errors import FairError
from .spec import MAX_LIST_ITEMS, MAX_NAME_CHARS, MAX_PATH_CHARS, parse_spec, read_spec_file, validation_message

SWEEP_FILE = "sweep.json"
CELL_SPEC = "spec.json"  # the cell's full run spec, in its folder (not a run file: --overwrite keeps it)
MAX_CELLS = 10_000
MAX_CELL_NAME = 200  # characters of a cell folder's name (file systems allow 255 bytes)

Field_ = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")]


class RangeAxis(BaseModel):
    """``{"range": [start, stop]}`` or ``[start, stop, step]``: the integers of Python's ``range``."""

    model_config = ConfigDict(extra="forbid")
    range: Annotated[list[int], Field(min_length=2, max_length=3)]

    def values(self) -> list[int]:
        return list(range(*self.range))


class SweepSpec(BaseModel):
    """What ``fair sweep`` runs (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    base: dict[str, Any] | Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)] = Field(
        description="the run spec every cell starts from: inline, or a spec file's path (relative to the sweep file)")
    axes: dict[Field_, Annotated[list[Any], Field(min_length=1, max_length=MAX_LIST_ITEMS)] | RangeAxis] = Field(
        min_length=1, description="dotted spec field -> the values it takes; the cells are the cartesian product")
    overrides: dict[Annotated[str, Field(max_length=MAX_NAME_CHARS)], dict[Field_, Any]] = Field(
        default_factory=dict, description="method name -> {dotted field: value}, applied after the axes to that "
                                          "method's cells (its own recipe)")
    output_dir: Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)] = Field(
        description="the sweep folder: one sub-folder per cell, and sweep.json")

    @field_validator("axes")
    @classmethod
    def _not_output_dir(cls, axes: dict[str, Any]) -> dict[str, Any]:
        if "output_dir" in axes:
            raise ValueError("output_dir is set per cell by the sweep, it cannot be an axis")
        return axes


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # the axis values of this cell
    spec: dict[str, Any]  # the full run spec (output_dir set)
    overrides: dict[str, Any] = field(default_factory=dict)  # the method's overrides applied


def set_field(spec: dict[str, Any], dotted: str, value: Any, what: str) -> None:
    node = spec
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FairError(f"{what} {dotted}: {part!r} is not a section of the base spec")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def get_field(spec: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = spec
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def cell_name(values: dict[str, Any]) -> str:
    """``method=us,train.seed=1``: ``key=value`` pairs (``X.name`` shown as ``X``), with every
    character but letters, digits and ``._=,+-`` replaced by ``_``."""
    parts = [f"{k[:-5] if k.endswith('.name') else k}={_short(v)}" for k, v in values.items()]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    return name[:MAX_CELL_NAME] if name not in {".", ".."} else f"_{name}"


def load_sweep(path: str | Path) -> tuple[SweepSpec, list[Cell]]:
    """The sweep spec at ``path`` and its cells, each checked as a run (one FairError line)."""
    path = Path(path)
    data = read_spec_file(path)
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise FairError(f"{path}: {validation_message(exc, model=SweepSpec)}") from None
    if isinstance(sweep.base, str):
        base_path = Path(sweep.base) if Path(sweep.base).is_absolute() else path.parent / sweep.base
        base = read_spec_file(base_path)
    else:
        base = sweep.base
    return sweep, expand(sweep, base)


def expand(sweep: SweepSpec, base: dict[str, Any]) -> list[Cell]:
    """The cells of ``sweep`` over ``base``, each validated (fields, plugins, params)."""
    from .runner import resolve

    axes = {k: v.values() if isinstance(v, RangeAxis) else v for k, v in sweep.axes.items()}
    for key, values in axes.items():
        if not values:
            raise FairError(f"axes.{key}: the range is empty")
    total = 1
    for values in axes.values():
        total *= len(values)
    if total > MAX_CELLS:
        raise FairError(f"axes: {total} cells, more than fair_core.sweep.MAX_CELLS = {MAX_CELLS}")
    methods = set()
    cells: list[Cell] = []
    names: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        spec = copy.deepcopy(base)
        for key, value in values.items():
            set_field(spec, key, value, "axes")
        method = get_field(spec, "method.name", "erm")
        methods.add(method)
        overrides = sweep.overrides.get(str(method), {})
        for key, value in overrides.items():
            set_field(spec, key, value, f"overrides.{method}")
        name = cell_name(values)
        if name in names:
            raise FairError(f"axes: the cells {values} and {names[name]} share the folder name {name!r}; "
                            f"use values that differ in letters or digits")
        names[name] = values
        spec["output_dir"] = str(Path(sweep.output_dir) / name)
        try:
            parsed = parse_spec(spec)
            resolve(parsed)
        except FairError as exc:
            raise FairError(f"cell {name}: {exc}") from None
        cells.append(Cell(name, values, parsed.model_dump(mode="json"), overrides))
    unknown = sorted(set(sweep.overrides) - {str(m) for m in methods})
    if unknown:
        raise FairError(f"overrides: {', '.join(unknown)} is no method of the sweep; its methods: "
                        f"{', '.join(sorted(map(str, methods)))}")
    return cells


# --------------------------------------------------------------------------- running
def cell_is_finished(cell: Cell) -> bool:
    """Whether the cell's folder holds its finished run (same result-determining spec)."""
    from .run_folder import read_record, run_state, spec_hash

    folder = Path(cell.spec["output_dir"])
    record = read_record(folder) or {}
    return (run_state(folder) == "finished" and record.get("spec_hash") == spec_hash(cell.spec)
            and (folder / "metrics.json").exists())


def run_cell_command(spec_file: str, threads: int | None) -> tuple[int, str]:
    """Run ``fair run SPEC_FILE --resume`` in a process of its own; its exit code and the last
    line of its error output (the run's one-line error). Module-level: submitit pickles it."""
    env = dict(os.environ)
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("MKL_NUM_THREADS", str(threads))
    env.setdefault("TQDM_DISABLE", "1")
    proc = subprocess.run([sys.executable, "-m", "fair_core.cli", "run", spec_file, "--resume"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    error = lines[-1] if lines else ""
    error = error.removeprefix("error: ")
    return proc.returncode, error[:500]


def run_cell_in_process(spec_file: str, threads: int | None) -> tuple[int, str]:
    """Run the cell in this process (a submitit job: already a process of its own): exit code
    0, or 2 and the run's one-line error for a user error, 1 and the exception's first line
    otherwise. Module-level: submitit pickles it."""
    import torch

    from .cli import error_line
    from .runner import run
    from .spec import load_spec

    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        run(load_spec(spec_file), resume=True)
    except FairError as exc:
        return 2, error_line(exc)[:500]
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        return 1, f"{type(exc).__name__}: {text}"[:500]
    return 0, ""


class Manifest:
    """``sweep.json``: each cell's state (``pending``, ``running``, ``finished``, ``failed`` with its
    error), rewritten atomically under a lock after each change."""

    def __init__(self, root: Path, source: str, cells: list[Cell]):
        self.path = root / SWEEP_FILE
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {
            "sweep": source,
            "cells": {c.name: {"state": "pending", "values": c.values, "overrides": c.overrides,
                               "output_dir": c.spec["output_dir"]} for c in cells},
        }

    def set(self, name: str, state: str, error: str | None = None) -> None:
        with self.lock:
            entry = self.data["cells"][name]
            entry["state"] = state
            entry.pop("error", None)
            if error:
                entry["error"] = error
            write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def run_sweep(sweep: SweepSpec, cells: list[Cell], source: str = "", jobs: int = 1,
              executor: Literal["local", "submitit"] = "local", submitit_executor: Any = None,
              report: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run the cells not finished yet, ``jobs`` at a time, locally or through submitit
    (``submitit_executor``: an executor to use, e.g. ``submitit.LocalExecutor``; by default
    ``submitit.AutoExecutor`` in ``<output_dir>/.submitit``, SLURM where there is one). Returns
    the cells of sweep.json; ``report`` gets one line per finished cell."""
    from tqdm.auto import tqdm

    root = Path(sweep.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(root, source, cells)
    todo = []
    for cell in cells:
        if cell_is_finished(cell):
            manifest.set(cell.name, "finished")
        else:
            folder = Path(cell.spec["output_dir"])
            folder.mkdir(parents=True, exist_ok=True)
            write_text(folder / CELL_SPEC, json.dumps(cell.spec, indent=2) + "\n")
            todo.append(cell)
    if not todo:
        report(f"all {len(cells)} cells of {root} are finished")
        return manifest.data["cells"]
    threads = max(1, (os.cpu_count() or 1) // jobs) if executor == "local" or submitit_executor is not None else None
    submit = _local if executor == "local" else _submitit(root, submitit_executor)
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="sweep", unit="cell")

    def one(cell: Cell) -> tuple[Cell, int, str]:
        manifest.set(cell.name, "running")
        try:
            code, error = submit(str(Path(cell.spec["output_dir"]) / CELL_SPEC), threads)
        except Exception as exc:  # the executor itself failed (submitit: the job was lost)
            code, error = 1, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        return cell, code, error

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, cell) for cell in todo]
        for future in as_completed(futures):
            cell, code, error = future.result()
            if code == 0 and cell_is_finished(cell):
                manifest.set(cell.name, "finished")
                bar.write(f"finished {cell.name}")
            else:
                error = error or f"exit code {code}"
                manifest.set(cell.name, "failed", error)
                bar.write(f"FAILED   {cell.name}: {error}")
            bar.update(1)
    bar.close()
    return manifest.data["cells"]


def _local(spec_file: str, threads: int | None) -> tuple[int, str]:
    return run_cell_command(spec_file, threads)


def _submitit(root: Path, executor: Any) -> Callable[[str, int | None], tuple[int, str]]:
    try:
        import submitit
    except ImportError:
        raise FairError("--executor submitit: submitit is not installed; pip install 'fair-core[submitit]'") from None
    if executor is None:  # SLURM where there is one, else submitit's local executor
        executor = submitit.AutoExecutor(folder=str(root / ".submitit"))

    def submit(spec_file: str, threads: int | None) -> tuple[int, str]:
        return executor.submit(run_cell_in_process, spec_file, threads).result()

    return submit


def sweep_json_schema() -> dict[str, Any]:
    schema = SweepSpec.model_json_schema()
    schema["title"] = "fair sweep spec"
    return schema
