"""Pickle-free checkpoints: nested state (module, optimiser, scheduler and method state) stored in
one safetensors file, tensors as tensors and everything else as JSON in the file's metadata.
Loading parses JSON and tensors only, so it never executes code.

A checkpoint read back is untrusted (a truncated, corrupt or foreign file): its header size and
nesting are bounded, its structure is checked node by node, and :func:`check_resume_state`
checks a loaded state against the run's model and optimisers before anything is restored. Every
problem is one :class:`FairError` line naming the file. A failed write (a full disk) raises
``OSError``, whatever the writer raised.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .errors import FairError
from .untrusted import check_nesting, quote, regular_file, size_text

_TENSOR, _DICT, _TUPLE = "__tensor__", "__dict__", "__tuple__"

# The safetensors header lists each tensor (~100 bytes) and holds the JSON state (optimiser
# hyper-parameters, the spec, method state): a ResNet-50 with AdamW needs ~60 KB; 16 MiB fits
# 100 000 tensors and keeps parsing it (JSON, ~25x in memory at worst) under 1 GB.
MAX_HEADER_BYTES = 16 * 2**20
# A state nests ~6 Python levels (state > optimizers > state > param > tensor), 3 JSON levels each;
# 64 leaves room for methods' own state and keeps the recursive restore far from the recursion limit.
MAX_STATE_DEPTH = 64
# List items and object entries of the JSON state: ~10 per tensor (ResNet-50 + AdamW: ~5 000 in all);
# 2 000 000 leaves room for methods' own lists and caps the restore at a couple of seconds.
MAX_STATE_ITEMS = 2_000_000
_NAMES_SHOWN = 3


def safetensors_write_error(exc: Exception, path: str | Path) -> OSError:
    """The ``OSError`` a failed safetensors write (``SafetensorError``, e.g. on a full disk) stands
    for, with the errno the writer reported when it says one (``os error 28``), so every
    ``except OSError`` of a write path reports it as one line."""
    match = re.search(r"os error (\d+)", str(exc))
    code = int(match.group(1)) if match else errno.EIO
    strerror = os.strerror(code) if match else f"cannot write safetensors: {str(exc)[:200]}"
    return OSError(code, strerror, str(path))


def _flatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(value, dict):
        return {_DICT: [[k, _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_flatten(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_flatten(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


class _Malformed(Exception):
    pass


def _where(loc: tuple) -> str:
    return "/".join(quote(str(p), 30) if not isinstance(p, int) else str(p) for p in loc[:8]) or "the top"


def _restore(value: Any, tensors: dict[str, torch.Tensor], loc: tuple = ()) -> Any:
    """The state ``value`` (the JSON skeleton) describes, checked node by node: every object is
    one of the three markers, every tensor reference names a tensor of the file."""
    if isinstance(value, list):
        return [_restore(v, tensors, (*loc, i)) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in (_TENSOR, _TUPLE, _DICT):
        raise _Malformed(f"an object at {_where(loc)} is not a tensor, tuple or dict record")
    (kind, body), = value.items()
    if kind == _TENSOR:
        if not isinstance(body, str) or body not in tensors:
            raise _Malformed(f"the state at {_where(loc)} refers to the tensor {quote(body)}, which the file does not hold")
        return tensors[body]
    if not isinstance(body, list):
        raise _Malformed(f"the {kind.strip('_')} record at {_where(loc)} is not a list")
    if kind == _TUPLE:
        return tuple(_restore(v, tensors, (*loc, i)) for i, v in enumerate(body))
    restored = {}
    for pair in body:
        if not (isinstance(pair, list) and len(pair) == 2 and (pair[0] is None or isinstance(pair[0], (str, int, float)))):
            raise _Malformed(f"the dict record at {_where(loc)} holds {quote(pair)}, not a [key, value] pair")
        restored[pair[0]] = _restore(pair[1], tensors, (*loc, pair[0]))
    return restored


def _references(value: Any, found: set[str]) -> set[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if isinstance(item.get(_TENSOR), str):
                found.add(item[_TENSOR])
            stack.extend(item.values())
    return found


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` written atomically; a failed write (a full disk) raises
    ``OSError`` as every other write does, the previous file is kept."""
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            raise safetensors_write_error(exc, path) from None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``path`` (a ``.safetensors`` file); a failed write raises
    ``OSError`` (the previous file is kept)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    write_safetensors(path, tensors, {"fair_state": json.dumps(skeleton)})


def check_safetensors_header(path: Path, problem: str) -> None:
    """Refuse a safetensors file whose header is larger than :data:`MAX_HEADER_BYTES` or runs past
    the end of the file, before the header is parsed: one line, ``problem`` (which names the file)
    and why."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
    except OSError as exc:
        raise FairError(f"{problem}: {exc.strerror or exc}") from None
    if len(prefix) < 8:
        raise FairError(f"{problem}: truncated ({size} bytes, not even a safetensors header)")
    (header,) = struct.unpack("<Q", prefix)
    if header > MAX_HEADER_BYTES:
        raise FairError(f"{problem}: its header claims {size_text(header)}, more than the "
                        f"{size_text(MAX_HEADER_BYTES)} a header may have (fair_core.checkpoint.MAX_HEADER_BYTES)")
    if 8 + header > size:
        raise FairError(f"{problem}: truncated (the header needs {8 + header} bytes, the file has {size})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; an unreadable, truncated or malformed
    file is one :class:`FairError` line naming it. Only the tensors the state refers to are read."""
    path = regular_file(path, "checkpoint")
    check_safetensors_header(path, f"unreadable checkpoint {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get("fair_state")
            if not isinstance(text, str):
                raise _Malformed("not a fair checkpoint (no fair_state metadata)")
            skeleton = json.loads(text)
            check_nesting(skeleton, MAX_STATE_DEPTH, "fair_core.checkpoint.MAX_STATE_DEPTH", f"checkpoint {path}",
                          MAX_STATE_ITEMS, "fair_core.checkpoint.MAX_STATE_ITEMS")
            if not (isinstance(skeleton, dict) and _DICT in skeleton):
                raise _Malformed("its state is not a dict")
            wanted = _references(skeleton, set()) & set(handle.keys())
            tensors = {k: handle.get_tensor(k) for k in sorted(wanted)}
        return _restore(skeleton, tensors)
    except FairError:
        raise
    except _Malformed as exc:
        raise FairError(f"unreadable checkpoint {path}: {exc}") from None
    except RecursionError:
        raise FairError(f"unreadable checkpoint {path}: its state nests too deeply") from None
    except Exception as exc:  # SafetensorError, JSON errors, OSError: all one line naming the file
        raise FairError(f"unreadable checkpoint {path}: {type(exc).__name__}: {exc}") from None


def _names(names: Sequence[str] | set[str]) -> str:
    shown = sorted(names)
    return ", ".join(quote(n, 80) for n in shown[:_NAMES_SHOWN]) + (f" and {len(shown) - _NAMES_SHOWN} more"
                                                                    if len(shown) > _NAMES_SHOWN else "")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def check_resume_state(
    state: Any,
    model: torch.nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    epochs: int,
    path: str | Path,
    schedulers: Sequence[Any] | None = None,
) -> None:
    """Check a state read by :func:`load_checkpoint` against the run it is to resume, before any
    ``load_state_dict``: the entries a run saves and their types, ``epoch`` an integer in
    ``[0, epochs)``, the model's tensors (same names, every one a tensor of the model's shape), as
    many optimisers (and schedulers) as the run has, each with the run's parameter groups and
    per-parameter state of the parameters' shapes (0-dim tensors such as Adam's ``step`` aside). A difference is one :class:`FairError` line
    naming ``path`` and what differs; nothing is returned."""
    where = f"--resume: the checkpoint {path}"

    def fail(message: str) -> None:
        raise FairError(f"{where}: {message}")

    if not isinstance(state, dict):
        fail("does not hold a run's state")
    kinds = {"epoch": int, "global_step": int, "post_trained": bool, "spec": dict, "model": dict,
             "optimizers": list, "schedulers": list, "method": dict}
    for key, kind in kinds.items():
        if key not in state:
            fail(f"has no {key}")
        value = state[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            fail(f"{key} is {quote(value)}, not {'an integer' if kind is int else 'a ' + kind.__name__}")
    if not (0 <= state["epoch"] < epochs or (epochs == 0 and state["epoch"] == -1)):  # -1: a loop of no epoch
        fail(f"epoch is {state['epoch']}, outside [0, {epochs}) for a run of {epochs} epochs")
    if state["global_step"] < 0:
        fail(f"global_step is {state['global_step']}, a negative step")

    expected = model.state_dict()
    saved = state["model"]
    missing, unexpected = set(expected) - set(saved), set(saved) - set(expected)
    if missing or unexpected:
        fail("its model does not match this run's model ("
             + "; ".join(part for part in (f"missing {_names(missing)}" if missing else "",
                                           f"unexpected {_names(unexpected)}" if unexpected else "") if part) + ")")
    for name, tensor in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor):
            fail(f"model tensor {quote(name, 80)} is {quote(value)}, not a tensor")
        if _shape(value) != _shape(tensor):
            fail(f"model tensor {quote(name, 80)} has the shape {list(value.shape)}, the model's is {list(tensor.shape)}")

    if len(state["optimizers"]) != len(optimizers):
        fail(f"holds {len(state['optimizers'])} optimiser states, this run's method has {len(optimizers)} optimisers")
    for i, (optimizer, saved_opt) in enumerate(zip(optimizers, state["optimizers"], strict=True)):
        _check_optimizer(optimizer, saved_opt, f"optimiser {i}", fail)
    if schedulers is not None and len(state["schedulers"]) != len(schedulers):
        fail(f"holds {len(state['schedulers'])} scheduler states, this run has {len(schedulers)}")
    for i, saved_scheduler in enumerate(state["schedulers"]):
        if not isinstance(saved_scheduler, dict):
            fail(f"scheduler {i} is {quote(saved_scheduler)}, not a scheduler state")


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: Any, name: str, fail) -> None:
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(saved.get("param_groups"), list)):
        fail(f"{name} is not an optimiser state (state and param_groups)")
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if len(saved_groups) != len(groups):
        fail(f"{name} has {len(saved_groups)} parameter groups, this run's has {len(groups)}")
    params: dict[Any, torch.Tensor] = {}
    for j, (group, saved_group) in enumerate(zip(groups, saved_groups, strict=True)):
        ids = saved_group.get("params") if isinstance(saved_group, dict) else None
        if not isinstance(ids, list):
            fail(f"{name} group {j} has no parameter list")
        if len(ids) != len(group["params"]):
            fail(f"{name} group {j} has {len(ids)} parameters, this run's has {len(group['params'])}")
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            fail(f"{name} group {j} lists parameters that are not parameter indices")
        params.update(zip(ids, group["params"], strict=True))
    for key, entry in saved["state"].items():
        if key not in params:
            fail(f"{name} has state for the parameter {quote(key)}, which none of its groups lists")
        if not isinstance(entry, dict):
            fail(f"{name} state of parameter {quote(key)} is {quote(entry)}, not a dict")
        shape = tuple(params[key].shape)
        for field, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                fail(f"{name} {quote(field, 40)} of parameter {quote(key)} has the shape {list(value.shape)}, "
                     f"the parameter's is {list(shape)}")
