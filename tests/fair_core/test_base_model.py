"""Two-stage methods: the base model named by method.params.base, or trained first in
<output_dir>/base (stage 1) and reused, never retrained, by a rerun or a resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_spec
from fair_core import Method
from fair_core.base_model import BaseModelParams, stage_one_spec
from fair_core.errors import FairError
from fair_core.plugins import Entry, get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec


class HeadRefit(Method):
    """A toy two-stage method: the base's encoder frozen (BatchNorm statistics included), its head
    retrained by the loop for one epoch (its own recipe through stage_train)."""

    Params = BaseModelParams
    two_stage = True
    seen_base: list = []

    def use_base(self, base, backbone):
        HeadRefit.seen_base.append({k: v.clone() for k, v in base.state_dict().items()})
        super().use_base(base, backbone)

    def stage_train(self, train):
        return train.model_copy(update={"epochs": 1, "lr": 0.01})

    def configure_optimizers(self, model, make_optimizer):
        model.encoder.requires_grad_(False)
        return [make_optimizer(model.head.parameters())]

    def on_epoch_start(self, model, trainer):
        model.encoder.eval()  # its BatchNorm statistics stay the base's


@pytest.fixture
def head_refit():
    registry = get_registry()
    registry.entries["methods"]["head_refit"] = Entry("methods", "head_refit", HeadRefit, "tests", "0")
    HeadRefit.seen_base.clear()
    yield registry
    del registry.entries["methods"]["head_refit"]


def _spec(out, **method_params):
    return small_spec(out, method={"name": "head_refit", "params": method_params},
                      data={"params": {"train_size": 300, "val_size": 16, "test_size": 64, "image_size": 16}})


def test_stage_one_is_the_erm_run_of_the_same_spec(tmp_path, head_refit):
    out = tmp_path / "two-stage"
    result = run(parse_spec(_spec(out)))
    erm = run(parse_spec({**_spec(tmp_path / "erm"), "method": {"name": "erm"}}))
    base = json.loads((out / "base" / "metrics.json").read_text())
    assert base["overall"] == erm["overall"] and base["fairness"] == erm["fairness"]
    assert (out / "base" / "predictions.csv").read_text() == (tmp_path / "erm" / "predictions.csv").read_text()
    # stage 2 started from the base's weights, kept its encoder and ran its own recipe (1 epoch)
    base_weights, weights = load_file(out / "base" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(v, HeadRefit.seen_base[0][k]) for k, v in base_weights.items())
    assert all(torch.equal(weights[k], v) for k, v in base_weights.items() if k.startswith("encoder."))
    assert not torch.equal(weights["head.weight"], base_weights["head.weight"])
    assert result["timing"]["epochs_timed"] == 1
    assert json.loads((out / "run.json").read_text())["method"] == "head_refit"


def test_a_rerun_with_resume_reuses_the_finished_stage_one(tmp_path, head_refit):
    out = tmp_path / "run"
    first = run(parse_spec(_spec(out)))
    stamp = (out / "base" / "model.safetensors").stat().st_mtime_ns
    (out / "checkpoint.safetensors").unlink()  # stage 2 must start again; stage 1 must not
    again = run(parse_spec(_spec(out)), resume=True)
    assert (out / "base" / "model.safetensors").stat().st_mtime_ns == stamp
    assert again["overall"] == first["overall"]


def test_a_base_run_folder_is_used_as_is(tmp_path, head_refit):
    first = tmp_path / "first"
    run(parse_spec(_spec(first)))
    out = tmp_path / "second"
    result = run(parse_spec(_spec(out, base=str(first / "base"))))
    assert not (out / "base").exists()
    assert result["overall"] == json.loads((first / "metrics.json").read_text())["overall"]


@pytest.mark.parametrize(("change", "message"), [
    ({"model": {"name": "small_cnn", "params": {"width": 4}}}, "method.params.base: .* has the model.params"),
    ({"data": {"name": "synthetic", "params": {"train_size": 300, "val_size": 16, "test_size": 64, "image_size": 20}}},
     "method.params.base: .* takes 16 px images; the training data has 20 px"),
])
def test_a_base_that_does_not_fit_is_refused_in_one_line(tmp_path, head_refit, change, message):
    first = tmp_path / "first"
    run(parse_spec(_spec(first)))
    spec = {**_spec(tmp_path / "second", base=str(first / "base")), **change}
    with pytest.raises(FairError, match=message) as error:
        run(parse_spec(spec))
    assert "\n" not in str(error.value)


def test_a_missing_base_is_one_line_naming_the_field(tmp_path, head_refit):
    with pytest.raises(FairError, match=r"^method.params.base: cannot load .*nowhere") as error:
        run(parse_spec(_spec(tmp_path / "out", base=str(tmp_path / "nowhere"))))
    assert "\n" not in str(error.value)


def test_stage_one_spec_is_erm_in_the_base_folder(tmp_path):
    spec = parse_spec(small_spec(tmp_path / "out", method={"name": "erm"}, hub={"push": True, "repo_id": "me/model"}))
    stage_one = stage_one_spec(spec)
    assert stage_one.method.name == "erm" and stage_one.method.params == {}
    assert stage_one.output_dir == str(tmp_path / "out" / "base") and stage_one.hub.push is False
    assert stage_one.train == spec.train and stage_one.data == spec.data and stage_one.model == spec.model
