"""Face recognition end to end: train on identities, evaluate on an RFW-layout folder (eval.data) with
both RFW protocols; the `fair face` commands through the real command line (one line, exit 2)."""

import json
import pickle
import subprocess

import pytest
import torch

from conftest import FAIR, write_jpeg
from fair_core import from_pretrained
from fair_core.evaluate import evaluate_model
from fair_core.plugins import get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec

RACES = ("African", "Asian")


def write_rfw(root, identities=6, images=3):
    """An RFW test layout with, per race, 10 folds of one positive then one negative pair (as RFW's
    folds of 300 + 300)."""
    seed = 0
    for race in RACES:
        names = [f"m.{race[:2].lower()}{i}" for i in range(identities)]
        (root / "txts" / race).mkdir(parents=True)
        (root / "txts" / race / f"{race}_people.txt").write_text("".join(f"{n}\t{images}\n" for n in names))
        pairs = [line for i in range(10) for line in (
            f"{names[i % identities]}\t{1 + i % images}\t{1 + (i + 1) % images}",
            f"{names[i % identities]}\t{1 + i % images}\t{names[(i + 1) % identities]}\t{1 + (i + 2) % images}")]
        (root / "txts" / race / f"{race}_pairs.txt").write_text("\n".join(pairs) + "\n")
        for name in names:
            (root / "data" / race / name).mkdir(parents=True)
            for k in range(1, images + 1):
                write_jpeg(root / "data" / race / name / f"{name}_{k:04d}.jpg", seed, (20, 20))
                seed += 1
    return root


def face_spec(out, method, rfw_root, **eval_params):
    return {
        "task": "verification",
        "data": {"name": "synthetic_faces", "params": {"train_identities": 40, "eval_identities": 4, "image_size": 16}},
        "model": {"name": "small_embedding_cnn", "params": {"width": 4, "embedding_dim": 16}},
        "method": method,
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.003, "seed": 0},
        "eval": {"split": "test", "batch_size": 16, "data": {"name": "rfw", "params": {"root": str(rfw_root), "image_size": 16}},
                 "params": {"flip": True, "fpr": 0.01, "instance_fpr": 0.01, **eval_params}},
        "output_dir": str(out),
    }


@pytest.fixture(scope="module")
def rfw_root(tmp_path_factory):
    return write_rfw(tmp_path_factory.mktemp("rfw") / "RFW")


IRESNET = {"name": "iresnet18", "params": {"width": 4, "input_size": 16, "embedding_dim": 16}}


@pytest.mark.parametrize("method,model", [({"name": "margin", "params": {"head": "arcface", "s": 16, "m": 0.2}}, None),
                                          ({"name": "mixfairface", "params": {"s": 16, "m": 0.2}}, IRESNET)])
def test_a_face_model_trained_on_identities_is_judged_on_rfw_by_race(tmp_path, rfw_root, method, model):
    out = tmp_path / "run"
    spec = face_spec(out, method, rfw_root)
    if model is not None:  # MixFairFace's debias layer on an IResNet's stage-4 map (1x1 at 16 px)
        spec["model"] = model
    result = run(parse_spec(spec))
    assert result["data"]["dataset"] == "rfw" and result["data"]["groups"] == list(RACES)
    assert result["overall"]["n"] == 36 and result["overall"]["identities"] == 12 and result["overall"]["pairs"] == 40
    for key in ("rfw_val_acc", "rfw_val_at_far", "inst_tpr_mean", "inst_fpr_mean", "inst_intra_sim", "inst_inter_sim"):
        assert result["overall"][key] is not None, key
    assert result["overall"]["inst_excluded"] == 0
    for key in ("rfw_val_std", "inst_tpr_std", "inst_fpr_std", "tpr_gap"):
        assert result["fairness"][key] is not None and result["fairness"][key] >= 0, key
    race_accuracy = [g["val_acc"] for g in result["groups"]]
    assert result["overall"]["rfw_val_acc"] == pytest.approx(sum(race_accuracy) / 2)
    assert result["fairness"]["rfw_val_std"] == pytest.approx(torch.tensor(race_accuracy).std().item())  # ddof 1
    assert [g["val_pairs"] for g in result["groups"]] == [20, 20]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fairness"] == result["fairness"]
    model = from_pretrained(out)  # an embedder: flip-summed normalised embeddings of [0, 1] images
    assert model.embed(torch.rand(2, 3, 16, 16)).shape == (2, 16)
    if method["name"] == "margin":  # fair evaluate of the run on RFW alone (no training split) says the same
        spec = face_spec(tmp_path / "evaluated", method, rfw_root)
        spec["data"] = spec["eval"].pop("data")
        evaluated = evaluate_model(str(out), parse_spec(spec))
        for section in ("overall", "fairness", "groups"):
            assert evaluated[section] == result[section], section


def test_face_commands_through_the_command_line(tmp_path):
    registry = get_registry()
    assert "face" in registry.names("commands") and registry.entries["commands"]["face"].package == "fair-face"
    for kind, name in (("metrics", "rfw_val_acc"), ("metrics", "inst_tpr_std"), ("models", "iresnet50"),
                       ("datasets", "face_zip"), ("methods", "mixfairface")):
        assert registry.entries[kind][name].package == "fair-face", name

    import io

    from PIL import Image

    def jpeg(seed):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (seed * 40 % 256, 30, 60)).save(buffer, format="JPEG")
        return buffer.getvalue()

    source = tmp_path / "Indian_test.bin"
    source.write_bytes(pickle.dumps(([jpeg(i) for i in range(4)], [True, False]), protocol=4))
    out = tmp_path / "converted"
    converted = subprocess.run([*FAIR, "face", "convert-bin", str(source), str(out)], capture_output=True, text=True,
                               timeout=300)
    assert converted.returncode == 0, converted.stderr
    assert "2 pairs written" in converted.stdout
    assert (out / "pairs.csv").read_text().splitlines()[1].startswith("Indian,images/Indian/00000_0.jpg")

    class Payload:
        def __reduce__(self):
            return (print, ("never",))

    hostile = tmp_path / "African_test.bin"
    hostile.write_bytes(pickle.dumps(([Payload(), b""], [True]), protocol=2))
    for command in (["face", "convert-bin", str(hostile), str(tmp_path / "x")],
                    ["face", "align", str(tmp_path), str(tmp_path / "aligned"), "--landmarks", str(tmp_path / "none.csv")],
                    ["face", "convert-weights", str(tmp_path / "missing.pth"), str(tmp_path / "w.safetensors")]):
        failed = subprocess.run([*FAIR, *command], capture_output=True, text=True, timeout=300)
        assert failed.returncode == 2, (command, failed.stderr)
        assert failed.stderr.startswith("error: ") and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "Traceback" not in failed.stderr
    assert not (tmp_path / "x").exists()
