"""Hub save/load/push, offline, with a local stand-in for the Hub."""

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import fair_core
from conftest import FAIR, small_spec
from fair_core import metrics as M
from fair_core.cli import app
from fair_core.errors import FairError
from fair_core.hub import from_pretrained
from fair_core.plugins import get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "run"
    result = run(parse_spec(small_spec(out, train={"epochs": 2, "seed": 1, "lr": 0.002})))
    return out, result


def evaluation_split(model):
    """The split the run evaluated, rebuilt from the model's config through the registry."""
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    builder = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"])
    return builder.read_split("test"), builder


def reproduce_metrics(model) -> dict:
    split, builder = evaluation_split(model)
    dataset = builder.load("test", model.info.target, model.info.sensitive)
    images = torch.stack([split.images[i] for i in range(len(dataset))])
    with torch.no_grad():
        preds = model.predict(images)  # raw [0, 1] images: the model applies its own preprocessing
    counts = M.group_confusion(preds, dataset.targets, dataset.groups, 2, 2)
    return {m.name: m.compute(counts).item() for m in M.BUILTIN_METRICS}


class FakeHub:
    """Stands in for HfApi: create_repo and upload_folder write to a local folder."""

    calls: list = []

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, token=None):
        return self

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), commit_message))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"local://{repo_id}/commit/1"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub")
    hub.calls = []
    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", hub)
    return hub


def test_from_pretrained_gives_the_same_logits_and_metrics(trained):
    out, result = trained
    model = from_pretrained(out)
    assert not model.training and model.class_names == ("square", "circle")
    split, _ = evaluation_split(model)
    rows = [line.split(",") for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    images = torch.stack([split.images[int(r[0])] for r in rows[:50]])
    expected = torch.tensor([[float(v) for v in r[-2:]] for r in rows[:50]])
    torch.testing.assert_close(model.predict_proba(images), expected, atol=2e-6, rtol=0)
    reproduced = reproduce_metrics(model)
    for section in ("overall", "fairness"):
        for name, value in result[section].items():
            if name != "n":
                assert reproduced[name] == pytest.approx(value, abs=1e-12), name


def test_push_then_load_from_the_stand_in_reproduces_the_metrics(trained, fake_hub):
    out, result = trained
    pushed = CliRunner().invoke(app, ["push", str(out), "--repo-id", "org/fair-erm", "--private"])
    assert pushed.exit_code == 0, pushed.output
    assert fake_hub.calls[0] == ("create_repo", "org/fair-erm", True)
    assert fake_hub.calls[1][2] == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    repo = fake_hub.root / "org/fair-erm"
    card = (repo / "README.md").read_text()
    assert "model-index:" in card and "- fairness" in card and "library_name: fair" in card
    assert "| group | n | accuracy |" in card
    for group in result["groups"]:
        assert f"| {group['group']} | {group['n']} | {group['accuracy']:.4f} |" in card
    lo, hi = result["intervals"]["eod"]
    assert f"| eod | {result['fairness']['eod']:.4f} | [{lo:.4f}, {hi:.4f}] |" in card
    assert 'from_pretrained("org/fair-erm")' in card
    model = fair_core.from_pretrained(repo)
    assert model.metrics["fairness"] == result["fairness"]
    reproduced = reproduce_metrics(model)
    assert reproduced["accuracy"] == pytest.approx(result["overall"]["accuracy"], abs=1e-12)
    assert reproduced["eod"] == pytest.approx(result["fairness"]["eod"], abs=1e-12)


def test_hub_section_pushes_at_the_end_of_a_run(tmp_path, fake_hub):
    spec = small_spec(tmp_path / "out", train={"epochs": 1}, hub={"push": True, "repo_id": "org/auto"})
    run(parse_spec(spec))
    assert [c[0] for c in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert (fake_hub.root / "org/auto/model.safetensors").is_file()
    with pytest.raises(FairError, match="hub: .*repo_id is required"):
        parse_spec(small_spec(tmp_path / "x", hub={"push": True}))


def test_loading_never_unpickles(trained, monkeypatch):
    out, _ = trained

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was called")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert from_pretrained(out).predict(torch.rand(2, 3, 24, 24)).shape == (2,)
    sources = Path(fair_core.__file__).parent.rglob("*.py")
    assert not [p for p in sources if "torch.load(" in p.read_text() or "pickle.load" in p.read_text()]


@pytest.fixture
def without_fair_face(monkeypatch):
    """The registry as on a machine where fair-face is not installed."""
    monkeypatch.setenv("FAIR_PLUGINS", "fair-core,fair-data,fair-methods")
    get_registry(refresh=True)
    yield
    monkeypatch.delenv("FAIR_PLUGINS")
    get_registry(refresh=True)


def test_corrupt_missing_and_unknown_architecture_errors(trained, tmp_path, without_fair_face):
    out, _ = trained
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors}")
    with pytest.raises(FairError, match="corrupt or incompatible weights"):
        from_pretrained(corrupt)
    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(FairError, match="no model.safetensors"):
        from_pretrained(missing)
    unknown = tmp_path / "unknown"
    shutil.copytree(out, unknown)
    config = json.loads((unknown / "config.json").read_text())
    config["model"] = {"name": "iresnet100", "params": {}, "package": "fair-face-extras"}
    (unknown / "config.json").write_text(json.dumps(config))
    with pytest.raises(FairError, match=r"provided by the package fair-face\b") as error:  # config's package: never named
        from_pretrained(unknown)
    assert "fair-face-extras" not in str(error.value)
    config["model"] = {"name": "iresnet100", "params": {}}
    (unknown / "config.json").write_text(json.dumps(config))
    with pytest.raises(FairError, match="provided by the package fair-face"):
        from_pretrained(unknown)


def test_fair_predict_on_image_files_and_offline_errors(trained, tmp_path):
    out, _ = trained
    model = from_pretrained(out)
    split, _ = evaluation_split(model)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        pixels = (split.images[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(path)
        paths.append(path)
    result = subprocess.run([*FAIR, "predict", str(out), *map(str, paths)], capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    decoded = torch.stack([fair_core.hub.read_image(p) for p in paths])
    for path, label in zip(paths, model.predict(decoded).tolist(), strict=True):
        line = next(line for line in result.stdout.splitlines() if path.name in line)
        assert model.class_names[label] in line
    offline = subprocess.run([*FAIR, "predict", "org/not-cached", str(paths[0])], capture_output=True, text=True, timeout=300,
                             env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert offline.returncode == 2 and "org/not-cached" in offline.stderr and "Traceback" not in offline.stderr
    missing = subprocess.run([*FAIR, "push", str(tmp_path), "--repo-id", "a/b"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not a finished run" in missing.stderr
