"""Faults: fuzzed specs, a diverging loss, a full disk."""

import errno
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import small_spec
from fair_core import Method
from fair_core.checkpoint import load_checkpoint
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


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import fair_core.checkpoint as checkpoint

    spec = parse_spec(small_spec(tmp_path / "out", train={"epochs": 2}))
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def save_file_then_fail(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            with open(filename, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file_then_fail)
    with pytest.raises(FairError, match="cannot write the checkpoint .*No space left on device"):
        run(spec, registry=get_registry(refresh=True))
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
