"""eval.data: evaluating on another dataset than the training one (train on identities, test on RFW)."""

import json

import pytest
from safetensors.torch import load_file

from conftest import small_spec
from fair_core import FairError
from fair_core.runner import resolve, run
from fair_core.spec import parse_spec

FACES = {"name": "synthetic_faces", "params": {"train_identities": 40, "eval_identities": 6, "image_size": 16}}


def face_spec(out, **eval_section):
    return parse_spec({
        "task": "verification", "data": FACES,
        "model": {"name": "small_embedding_cnn", "params": {"width": 4, "embedding_dim": 16}},
        "train": {"epochs": 1, "batch_size": 64}, "eval": {"split": "test", **eval_section}, "output_dir": str(out)})


def test_a_verification_run_evaluates_on_the_eval_dataset(tmp_path):
    other = {"name": "synthetic_faces", "params": {"seed": 3, "num_groups": 3, "eval_identities": 5, "image_size": 16}}
    result = run(face_spec(tmp_path / "run", data=other))
    assert result["data"]["groups"] == ["A", "B", "C"]  # the evaluation data's groups, not the training data's two
    assert result["overall"]["identities"] == 15 and result["data"]["training_identities"] == 40
    saved = load_file(str(tmp_path / "run" / "embeddings.safetensors"))
    assert saved["embeddings"].shape[0] == 15 * 5
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["dataset"] == "synthetic_faces"


def test_eval_data_is_checked_before_anything_runs(tmp_path):
    with pytest.raises(FairError, match="eval.data.name: unknown dataset 'nope'"):
        resolve(face_spec(tmp_path / "a", data={"name": "nope"}))
    with pytest.raises(FairError, match="eval.data.params"):
        resolve(face_spec(tmp_path / "b", data={"name": "synthetic_faces", "params": {"num_groups": 9}}))
    with pytest.raises(FairError, match="eval.data.name: the dataset synthetic serves the classification task"):
        resolve(face_spec(tmp_path / "c", data={"name": "synthetic"}))
    with pytest.raises(FairError, match="eval.split: unknown split 'valid' for synthetic_faces"):
        resolve(face_spec(tmp_path / "d", data={"name": "synthetic_faces"}, split="valid"))
    assert not (tmp_path / "a").exists()


def test_a_classifier_is_evaluated_on_its_own_classes(tmp_path):
    spec = parse_spec(small_spec(tmp_path / "run", eval={"data": {"name": "synthetic", "target": "color", "sensitive": ["shape"]}}))
    with pytest.raises(FairError, match="eval.data: the classes of synthetic"):
        run(spec)
    same = parse_spec(small_spec(tmp_path / "ok", train={"epochs": 1}, eval={"bootstrap": 0, "data": {"name": "synthetic",
                                 "params": {"seed": 7, "test_size": 64, "image_size": 24}}}))
    assert run(same)["overall"]["n"] == 64
