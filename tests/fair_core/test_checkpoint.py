"""Pickle-free checkpoints and atomic writes."""

import pytest
import torch

from fair_core.atomic import atomic_path, write_text
from fair_core.checkpoint import load_checkpoint, save_checkpoint
from fair_core.errors import FairError


def test_nested_state_round_trips_with_key_types(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), betas=(0.8, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"epoch": 3, "name": "x", "none": None, "optim": optimizer.state_dict(), "model": model.state_dict()}
    save_checkpoint(tmp_path / "c.safetensors", state)
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded["epoch"] == 3 and loaded["none"] is None
    assert list(loaded["optim"]["state"]) == [0, 1]  # int keys survive
    assert loaded["optim"]["param_groups"][0]["betas"] == (0.8, 0.99)  # tuples survive
    torch.testing.assert_close(loaded["optim"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(loaded["optim"])


def test_unreadable_checkpoint_is_reported_by_path(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(FairError, match="unreadable checkpoint .*c.safetensors"):
        load_checkpoint(path)
    with pytest.raises(FairError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_non_serialisable_state_is_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint"):
        save_checkpoint(tmp_path / "c.safetensors", {"f": object()})
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
