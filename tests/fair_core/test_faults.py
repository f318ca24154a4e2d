"""Faults: fuzzed specs, config.json files, checkpoints and metrics.json files; a diverging loss;
a full disk (as OSError and as safetensors reports it)."""

import errno
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import save_file

from conftest import small_spec
from fair_core import Method
from fair_core.checkpoint import load_checkpoint, save_checkpoint
from fair_core.errors import FairError
from fair_core.plugins import Entry, get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec, read_spec_file

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
section_names = st.sampled_from(["data", "model", "method", "train", "eval", "output_dir", "hub", "bogus"])
field_names = st.sampled_from(["name", "params", "epochs", "lr", "optimizer", "split", "metrics", "seed", "x"])
specs = st.dictionaries(section_names, json_values | st.dictionaries(field_names, json_values, max_size=4), max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_random_specs_give_a_validation_message_or_a_spec(data):
    try:
        parse_spec(data)
    except FairError as exc:
        message = str(exc)
        assert message and "\n" not in message and ":" in message


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_in_a_spec_file_give_a_clear_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "spec.json"
    path.write_bytes(content)
    try:
        parse_spec(read_spec_file(path))
    except FairError as exc:
        assert "\n" not in str(exc)
    except UnicodeDecodeError:
        pytest.fail("undecodable bytes must be a FairError")


class Diverges(Method):
    """Its loss becomes NaN at the second step of the second epoch."""

    def compute_loss(self, model, batch):
        loss = super().compute_loss(model, batch)
        self.calls = getattr(self, "calls", 0) + 1
        return loss * float("nan") if self.calls == 12 else loss


def registry_with(name, obj):
    registry = get_registry(refresh=True)
    registry.entries["methods"][name] = Entry("methods", name, obj, "tests", "0")
    return registry


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path):
    spec = parse_spec(small_spec(tmp_path / "out", method={"name": "diverges"}, train={"epochs": 3}))
    with pytest.raises(FairError, match=r"loss is nan at epoch 2, step 2; the last good checkpoint is .*checkpoint.safetensors"):
        run(spec, registry=registry_with("diverges", Diverges))
    assert load_checkpoint(tmp_path / "out/checkpoint.safetensors")["epoch"] == 0
    assert not (tmp_path / "out/metrics.json").exists()


@pytest.mark.parametrize("full_disk", [
    lambda: OSError(errno.ENOSPC, "No space left on device"),
    # safetensors reports a full disk as SafetensorError, not OSError: still one line
    lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
], ids=["OSError", "SafetensorError"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, full_disk):
    import fair_core.checkpoint as checkpoint

    spec = parse_spec(small_spec(tmp_path / "out", train={"epochs": 2}))
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def save_file_then_fail(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(filename, "wb") as handle:
                handle.write(b"partial")
            raise full_disk()
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file_then_fail)
    with pytest.raises(FairError, match="cannot write the checkpoint .*No space left on device") as error:
        run(spec, registry=get_registry(refresh=True))
    assert "\n" not in str(error.value)
    assert load_checkpoint(tmp_path / "out/checkpoint.safetensors")["epoch"] == 0  # the good one, not the partial
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")] == []


def test_undecodable_spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FairError, match="spec.json"):
        read_spec_file(path)
    path.write_text(json.dumps({"train": {"epochs": 0}}))
    with pytest.raises(FairError, match="train.epochs: Input should be greater than or equal to 1"):
        parse_spec(read_spec_file(path))


def test_disk_full_while_writing_the_results_keeps_the_checkpoint(tmp_path, monkeypatch):
    import fair_core.hub as hub

    spec = parse_spec(small_spec(tmp_path / "out", train={"epochs": 1}))

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(hub, "save_model", full)
    with pytest.raises(FairError, match="cannot write the results to .*No space left on device") as error:
        run(spec, registry=get_registry(refresh=True))
    assert "\n" not in str(error.value)
    state = load_checkpoint(tmp_path / "out/checkpoint.safetensors")
    assert state["post_trained"] and state["epoch"] == 0  # the trained weights are not stranded
    assert not (tmp_path / "out/model.safetensors").exists()


# --------------------------------------------------------------------------- fuzz: config.json, checkpoints, metrics.json
def assert_one_line(exc: FairError) -> None:
    message = str(exc)
    assert message and "\n" not in message and len(message) <= 10_000
    event("refused")


def mutated(base, path, value, delete):
    """``base`` (parsed JSON) with the node at ``path`` (indices into sorted keys / list items) replaced by
    ``value``, or deleted."""
    data = json.loads(json.dumps(base))
    if not path:
        return value
    node = data
    for step, index in enumerate(path):
        if isinstance(node, dict) and node:
            key = sorted(node)[index % len(node)]
        elif isinstance(node, list) and node:
            key = index % len(node)
        else:
            return data
        if step == len(path) - 1 or not isinstance(node[key], (dict, list)):
            if delete and isinstance(node, dict):
                del node[key]
            else:
                node[key] = value
            return data
        node = node[key]
    return data


mutations = st.tuples(st.lists(st.integers(0, 40), min_size=1, max_size=5), json_values, st.booleans())


def write_mutated(folder, name, case, base_dir):
    """``folder/name``: the fuzz case's bytes, or ``base_dir/name`` with the case's mutation."""
    if isinstance(case, bytes):
        (folder / name).write_bytes(case)
    else:
        base = json.loads((base_dir / name).read_text())
        (folder / name).write_text(json.dumps(mutated(base, *case)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutations, json_values.map(lambda v: ((), v, False)), st.binary(max_size=100)))
def test_fuzzed_config_json_loads_or_gives_one_line(tiny_run, tmp_path_factory, case):
    from fair_core.hub import from_pretrained

    folder = tmp_path_factory.getbasetemp() / "fuzz-config"
    if not folder.exists():
        shutil.copytree(tiny_run, folder)
    write_mutated(folder, "config.json", case, tiny_run)
    try:
        from_pretrained(folder)
        event("loaded")
    except FairError as exc:
        assert_one_line(exc)


def fuzz_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    state = {"epoch": 1, "global_step": 3, "post_trained": False, "spec": {"x": 1}, "model": model.state_dict(),
             "optimizers": [optimizer.state_dict()], "schedulers": [{"last_epoch": 1}], "method": {}}
    return model, [optimizer], state


def check_loaded(path, model, optimizers) -> None:
    from fair_core.checkpoint import check_resume_state

    try:
        state = load_checkpoint(path)
        event("loaded")
        check_resume_state(state, model, optimizers, 3, path)
        event("resumable")
    except FairError as exc:
        assert_one_line(exc)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=16), st.booleans())
def test_fuzzed_checkpoint_bytes_load_or_give_one_line(tmp_path_factory, position, patch, truncate):
    model, optimizers, state = fuzz_state()
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    save_checkpoint(path, state)
    data = bytearray(path.read_bytes())
    position %= len(data)
    data = data[:position] if truncate else data[:position] + patch + data[position + len(patch):]
    path.write_bytes(bytes(data))
    check_loaded(path, model, optimizers)


markers = st.recursive(
    st.none() | st.integers() | st.floats() | st.text(max_size=4)
    | st.fixed_dictionaries({"__tensor__": st.sampled_from(["t0", "t1", "t9"]) | st.integers()}),
    lambda children: st.lists(children, max_size=3)
    | st.fixed_dictionaries({"__dict__": st.lists(st.tuples(json_values, children).map(list) | children, max_size=3)})
    | st.fixed_dictionaries({"__tuple__": st.lists(children, max_size=3) | children})
    | st.dictionaries(st.text(max_size=4), children, max_size=2),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(markers | st.text(max_size=30))
def test_fuzzed_checkpoint_structures_load_or_give_one_line(tmp_path_factory, skeleton):
    model, optimizers, _ = fuzz_state()
    path = tmp_path_factory.getbasetemp() / "fuzz-structure.safetensors"
    text = skeleton if isinstance(skeleton, str) else json.dumps(skeleton)
    save_file({"t0": torch.zeros(4), "t1": torch.zeros(4, 3)}, str(path), metadata={"fair_state": text})
    check_loaded(path, model, optimizers)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6),
       json_values | st.sampled_from([(0,), (4,), (4, 3), (2, 2)]).map(torch.zeros), st.booleans())
def test_fuzzed_resume_states_pass_or_give_one_line(path, value, delete):
    from fair_core.checkpoint import check_resume_state

    model, optimizers, state = fuzz_state()
    node = state
    for step, index in enumerate(path):
        keys = sorted(node, key=str) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[index % len(keys)]
        if step == len(path) - 1 or not isinstance(node[key], (dict, list)):
            if delete and isinstance(node, dict):
                del node[key]
            else:
                node[key] = value
            break
        node = node[key]
    try:
        check_resume_state(state, model, optimizers, 3, "checkpoint.safetensors")
        event("resumable")
    except FairError as exc:
        assert_one_line(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutations, json_values.map(lambda v: ((), v, False)), st.binary(max_size=100)))
def test_fuzzed_metrics_json_compares_or_gives_one_line(tiny_run, tmp_path_factory, case):
    from fair_core.report import comparison_rows

    folder = tmp_path_factory.getbasetemp() / "fuzz-metrics"
    folder.mkdir(exist_ok=True)
    write_mutated(folder, "metrics.json", case, tiny_run)
    try:
        header, rows = comparison_rows([tiny_run, folder])
        assert all(isinstance(cell, str) for row in rows for cell in row)
        event("compared")
    except FairError as exc:
        assert_one_line(exc)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_random_yaml_spec_text_gives_a_spec_or_one_line(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "replace"))
    try:
        parse_spec(read_spec_file(path))
    except FairError as exc:
        assert_one_line(exc)
