"""fair evaluate: a run folder evaluated again gives its own figures (every task); a model from a
registered source, with name matching, label maps (sums, multi-label), the errors of a bad map or
an unknown source; fair compare and fair push of evaluations; two processes against one."""

import csv
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import FAIR, small_spec
from fair_core.cli import app
from fair_core.errors import FairError
from fair_core.evaluate import evaluate_model
from fair_core.plugins import Entry, Registry, get_registry
from fair_core.report import comparison_rows
from fair_core.runner import run
from fair_core.spec import parse_spec

ENV = {**os.environ, "TQDM_DISABLE": "1"}
SECTIONS = ("data", "overall", "groups", "classes", "fairness", "intervals", "operating_fpr", "confidence", "bootstrap")
DATA = {"name": "synthetic", "params": {"train_size": 128, "val_size": 16, "test_size": 101, "image_size": 16}}

# A model source as a plugin registers it: "fake:LABEL,LABEL,..." is a tiny convolutional
# classifier with one output per label, fixed by its seed, that normalises its own inputs.
PLUGIN = '''
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from fair_core import hookimpl
from fair_core.sources import LoadedModel, ModelSource


def tiny_net(outputs, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, outputs, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class FakeModel(LoadedModel):
    task = "classification"

    def __init__(self, labels, options):
        self.labels, self.multi_label, self.input_size = labels, options.multi_label, options.input_size
        self.module = tiny_net(len(labels), options.seed)
        self.source = {"kind": "fake", "ref": ",".join(labels), "seed": options.seed}

    def scores(self, images):
        return self.module((images - 0.5) / 0.25) * 5


class FakeSource(ModelSource):
    prefix = "fake"
    extra = "fair-core[fake]"
    description = "tiny seeded test classifiers"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        multi_label: bool = False
        input_size: int | None = None
        seed: int = 0

    def load(self, ref, options):
        if ref == "missing-library":
            raise ModuleNotFoundError("No module named 'fakelib'", name="fakelib")
        return FakeModel(tuple(ref.split(",")), options)


@hookimpl
def fair_register_model_sources(register):
    register("fake", FakeSource)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The fake source as an installed plugin (a dist-info on PYTHONPATH, for subprocesses) and a
    registry holding it (for this process)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "fair_fake_source.py").write_text(PLUGIN)
    dist = root / "fair_fake_source-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fair-fake-source\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fair]\nfake = fair_fake_source\n")
    spec = importlib.util.spec_from_file_location("fair_fake_source", root / "fair_fake_source.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = get_registry()
    registry = Registry(entries={kind: dict(named) for kind, named in base.entries.items()})
    registry.entries["sources"]["fake"] = Entry("sources", "fake", module.FakeSource, "fair-fake-source", "1.0")
    return root, registry, module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    spec = small_spec(out, data=DATA, train={"epochs": 1, "batch_size": 32}, eval={"bootstrap": 20, "batch_size": 16})
    return out, spec, run(parse_spec(spec))


def spec_at(spec, out, **sections):
    return parse_spec({**spec, "output_dir": str(out), **sections})


def same_figures(a, b):
    for key in SECTIONS:
        assert a.get(key) == b.get(key), key


def test_a_classification_run_evaluated_again_gives_its_own_figures_and_files(trained, tmp_path):
    out, spec, result = trained
    evaluated = evaluate_model(str(out), spec_at(spec, tmp_path / "eval"))
    same_figures(result, evaluated)
    assert (tmp_path / "eval/predictions.csv").read_bytes() == (out / "predictions.csv").read_bytes()
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert saved["evaluation"]["model"] == str(out) and "method" not in saved["spec"] and "model" not in saved["spec"]
    assert saved["evaluation"]["source"]["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    record = json.loads((tmp_path / "eval/run.json").read_text())
    assert record["state"] == "finished" and record["evaluation"] == saved["evaluation"]
    assert not (tmp_path / "eval/model.safetensors").exists() and not (tmp_path / "eval/checkpoint.safetensors").exists()
    assert (tmp_path / "eval/log.jsonl").is_file()
    with pytest.raises(FairError, match="holds a finished evaluation .* pass --overwrite"):
        evaluate_model(str(out), spec_at(spec, tmp_path / "eval"))


def test_a_fair_model_from_the_hub_cache_is_recorded_with_its_commit(trained, tmp_path, monkeypatch):
    out, spec, result = trained
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache/models--org--evaluated"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text(commit)
    shutil.copytree(out, repo / "snapshots" / commit, ignore=lambda *_: ["run.json", "checkpoint.safetensors"])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    for model in ("org/evaluated", f"org/evaluated@{commit}"):
        evaluated = evaluate_model(model, spec_at(spec, tmp_path / "eval"), overwrite=True)
        same_figures(result, evaluated)
        assert evaluated["evaluation"]["source"]["revision"] == commit
    with pytest.raises(FairError, match="MODEL: org/absent is no folder here; as a Hub id: org/absent: cannot get"):
        evaluate_model("org/absent", spec_at(spec, tmp_path / "absent"))


@pytest.mark.parametrize("task", ["verification", "segmentation"])
def test_verification_and_segmentation_runs_evaluated_again_give_their_own_figures(tmp_path, task):
    if task == "verification":
        spec = small_spec(tmp_path / "run", task="verification",
                          data={"name": "synthetic_faces", "params": {"train_identities": 12, "eval_identities": 6,
                                                                      "eval_images": 3, "image_size": 16}},
                          model={"name": "small_embedding_cnn", "params": {"width": 4, "embedding_dim": 8}},
                          train={"epochs": 1, "batch_size": 32}, eval={"batch_size": 5, "bootstrap": 0,
                                                                       "params": {"fpr": 0.05, "flip": True}})
    else:
        spec = small_spec(tmp_path / "run", task="segmentation",
                          data={"name": "synthetic_segmentation", "sensitive": ["lighting"],
                                "params": {"train_size": 16, "test_size": 9, "image_size": 16}},
                          model={"name": "small_encoder_decoder", "params": {"width": 4}},
                          train={"epochs": 1, "batch_size": 8}, eval={"batch_size": 4, "bootstrap": 0})
    result = run(parse_spec(spec))
    evaluated = evaluate_model(str(tmp_path / "run"), spec_at(spec, tmp_path / "eval"))
    same_figures(result, evaluated)
    if task == "verification":
        assert evaluated["data"]["training_identities"] == 12  # the model's own, from its config
        a, b = load_file(tmp_path / "run/embeddings.safetensors"), load_file(tmp_path / "eval/embeddings.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert (tmp_path / "eval/per_image.csv").read_bytes() == (tmp_path / "run/per_image.csv").read_bytes()


def fake_scores(module, labels, seed=0, size=16):
    """The fake source's model on the synthetic test split, computed here: scores, targets, groups."""
    builder_cls = get_registry().get("datasets", "synthetic").obj
    split = builder_cls(builder_cls.Params.model_validate(DATA["params"]), "synthetic").read_split("test")
    images = torch.stack([split.images[i] for i in range(len(split.attributes["shape"]))])
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    net = module.tiny_net(len(labels), seed)
    with torch.no_grad():
        return net((images - 0.5) / 0.25) * 5, split.attributes["shape"], split.attributes["color"]


def check_against(out, result, probs, targets, groups):
    """metrics.json's group accuracies and predictions.csv's scores against class probabilities."""
    predicted = probs.argmax(1)
    for g, row in enumerate(result["groups"]):
        chosen = groups == g
        assert row["n"] == int(chosen.sum())
        assert row["accuracy"] == pytest.approx((predicted[chosen] == targets[chosen]).double().mean().item(), abs=1e-12)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    scores = torch.tensor([[float(r["score_square"]), float(r["score_circle"])] for r in rows])
    order = torch.tensor([int(r["index"]) for r in rows])
    torch.testing.assert_close(scores, probs[order].float(), atol=2e-6, rtol=0)


def test_a_source_model_with_labels_matched_by_name(trained, tmp_path, plugin):
    _, registry, module = plugin
    _, spec, _ = trained
    labels = ("Circle", "triangle", "square")  # "circle" ignoring case; the dataset's classes: square, circle
    result = evaluate_model("fake:" + ",".join(labels), spec_at(spec, tmp_path / "e"), registry=registry,
                            options={"input_size": 20, "seed": 3})
    logits, targets, groups = fake_scores(module, labels, seed=3, size=20)
    chosen = logits[:, [2, 0]]  # square, circle
    check_against(tmp_path / "e", result, chosen.softmax(1), targets, groups)
    assert result["evaluation"]["source"] == {"kind": "fake", "ref": "Circle,triangle,square", "seed": 3}
    assert result["evaluation"]["label_map"] == {"square": ["square"], "circle": ["Circle"]}


def test_a_label_map_file_sums_the_probabilities_of_several_labels(trained, tmp_path, plugin):
    _, registry, module = plugin
    _, spec, _ = trained
    labels = ("box", "cube", "disc", "ball")
    (tmp_path / "map.json").write_text(json.dumps({"square": ["box", "cube"], "circle": ["ball", "disc"]}))
    result = evaluate_model("fake:" + ",".join(labels), spec_at(spec, tmp_path / "e"), tmp_path / "map.json",
                            registry=registry)
    logits, targets, groups = fake_scores(module, labels)
    p = logits.double().softmax(1)
    check_against(tmp_path / "e", result, torch.stack([p[:, 0] + p[:, 1], p[:, 2] + p[:, 3]], 1), targets, groups)


def test_a_multi_label_model_gives_a_binary_target_one_sigmoid_column(trained, tmp_path, plugin):
    _, registry, module = plugin
    _, spec, _ = trained
    labels = ("Smiling", "Circle", "Young")  # found: circle; square is its complement
    result = evaluate_model("fake:" + ",".join(labels), spec_at(spec, tmp_path / "e"), registry=registry,
                            options={"multi_label": True})
    logits, targets, groups = fake_scores(module, labels)
    p = torch.sigmoid(logits[:, 1].double())
    check_against(tmp_path / "e", result, torch.stack([1 - p, p], 1), targets, groups)
    assert result["evaluation"]["label_map"] == {"square": "1 - Circle", "circle": ["Circle"]}


def test_bad_models_and_maps_are_one_line_and_write_nothing(trained, tmp_path, plugin):
    _, registry, _ = plugin
    _, spec, _ = trained
    out = tmp_path / "e"
    cases = [
        ("fake:box,disc", {"square": "box"}, None, r"--label-map: the dataset class\(es\) \"circle\" are unmapped"),
        ("fake:box,disc", None, None, r"fake:box,disc: the dataset class\(es\) \"square\", \"circle\" are not among"),
        ("fake:missing-library", None, None, r"MODEL: fake: models need the library fakelib \(pip install "
                                             r"'fair-core\[fake\]'\)"),
        ("fake:square,circle", None, {"size": 3}, r"--option.size: unknown field; allowed: multi_label, input_size, seed"),
        ("nope:thing", None, None, r"MODEL: unknown model source 'nope' in 'nope:thing'; sources: fair:, fake:, hf:, "
                                   r"onnx:, timm:"),
        (str(tmp_path / "absent"), None, None, "absent"),
    ]
    for model, label_map, options, message in cases:
        with pytest.raises(FairError, match=message):
            evaluate_model(model, spec_at(spec, out), label_map, options, registry=registry)
    faces = small_spec(out, task="verification", data={"name": "synthetic_faces", "params": {"image_size": 16}})
    with pytest.raises(FairError, match="MODEL: fake:a,b is a classification model; the spec's task is verification"):
        evaluate_model("fake:a,b", parse_spec(faces), registry=registry)
    assert not out.exists()


def test_the_command_line_refuses_a_bad_map_in_one_line_and_evaluates_with_a_good_one(trained, tmp_path, plugin,
                                                                                     write_spec, monkeypatch):
    root, _, module = plugin
    _, spec, _ = trained
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(root), ENV.get("PYTHONPATH", "")]),
           "FAIR_PLUGINS": "fair-core,fair-data,fair-fake-source"}
    (tmp_path / "bad.json").write_text(json.dumps({"square": "box", "circle": "sphere"}))
    path = write_spec({**spec, "output_dir": str(tmp_path / "e")})
    bad = subprocess.run([*FAIR, "evaluate", "fake:box,disc", str(path), "--label-map", str(tmp_path / "bad.json")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2, bad.stderr[-2000:]
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in bad.stderr
    assert "the class \"circle\" maps to the label \"sphere\", which the model lacks" in lines[0] and "\"disc\"" in lines[0]
    assert not (tmp_path / "e").exists()

    # the same command line in this process, with the plugin's source registered
    monkeypatch.setitem(get_registry().entries["sources"], "fake",
                        Entry("sources", "fake", module.FakeSource, "fair-fake-source", "1.0"))
    (tmp_path / "good.json").write_text(json.dumps({"square": "box", "circle": "disc"}))
    good = CliRunner().invoke(app, ["evaluate", "fake:disc,box", str(path), "--set", "eval.bootstrap=0", "--split", "val",
                                    "--label-map", str(tmp_path / "good.json"), "--option", "seed=2"])
    assert good.exit_code == 0, good.output
    assert "note: fair evaluate ignores the spec's model, method, train section(s)" in " ".join(good.output.split())
    assert "evaluated (fake:disc,box) on synthetic (val)" in " ".join(good.output.split())
    metrics = json.loads((tmp_path / "e/metrics.json").read_text())
    assert metrics["data"]["split"] == "val" and metrics["overall"]["n"] == 16 and not metrics["intervals"]
    assert metrics["evaluation"]["source"]["seed"] == 2


def test_fair_compare_shows_an_evaluation_beside_the_trained_run(trained, tmp_path, plugin):
    out, spec, result = trained
    _, registry, _ = plugin
    evaluate_model("fake:square,circle", spec_at(spec, tmp_path / "fake-eval"), registry=registry)
    header, rows = comparison_rows([out, tmp_path / "fake-eval"])
    assert header[:4] == ["run", "task", "method", "dataset"]
    assert [r[:4] for r in rows] == [["run", "classification", "erm", "synthetic"],
                                     ["fake-eval", "classification", "evaluated (fake:square,circle)", "synthetic"]]
    assert rows[0][header.index("accuracy")] == f"{result['overall']['accuracy']:.4f}"


class StandInHub:
    """create_repo and upload_folder write to a local folder."""

    def __init__(self, root):
        self.root = root

    def __call__(self, token=None):
        return self

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"local://{repo_id}"


def test_push_republishes_an_evaluated_fair_model_and_refuses_an_external_one(trained, tmp_path, plugin, monkeypatch):
    from fair_core.hub import push_run

    out, spec, _ = trained
    _, registry, _ = plugin
    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", StandInHub(tmp_path / "hub"))
    other = {**DATA, "params": {**DATA["params"], "seed": 5}}  # new images: an evaluation on other data
    evaluated = evaluate_model(str(out), spec_at(spec, tmp_path / "eval", data=other))
    push_run(tmp_path / "eval", "org/evaluated")
    repo = tmp_path / "hub/org/evaluated"
    assert json.loads((repo / "config.json").read_text()) == json.loads((out / "config.json").read_text())
    assert (repo / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert json.loads((repo / "metrics.json").read_text())["overall"] == evaluated["overall"]
    card = (repo / "README.md").read_text()
    assert "## Evaluation on synthetic (test split, n = 101)" in card and "## Evaluation spec" in card
    assert f"| accuracy | {evaluated['overall']['accuracy']:.4f} |" in card

    evaluate_model("fake:square,circle", spec_at(spec, tmp_path / "fake-eval"), registry=registry)
    with pytest.raises(FairError, match="an evaluation of fake:square,circle, a model fair did not train; fair push "
                                        "publishes fair's own models only"):
        push_run(tmp_path / "fake-eval", "org/x")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    evaluate_model(str(copy), spec_at(spec, tmp_path / "eval-copy"))
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(FairError, match="have changed since this evaluation"):
        push_run(tmp_path / "eval-copy", "org/y")


def test_two_processes_evaluate_every_sample_once_as_one_process(trained, tmp_path, write_spec):
    out, spec, _ = trained
    one = evaluate_model(str(out), spec_at(spec, tmp_path / "one"))
    path = write_spec({**spec, "output_dir": str(tmp_path / "two")})
    result = subprocess.run([*FAIR, "evaluate", str(out), str(path), "--num-processes", "2"], capture_output=True,
                            text=True, timeout=600, env={**ENV, "FAIR_PLUGINS": "fair-core,fair-data,fair-methods"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("accuracy by group") == 1  # one main process reports
    two = json.loads((tmp_path / "two/metrics.json").read_text())
    same_figures(one, two)
    assert two["timing"]["processes"] == 2 and json.loads((tmp_path / "two/run.json").read_text())["world_size"] == 2
    rows = list(csv.DictReader((tmp_path / "two/predictions.csv").open()))
    assert sorted(int(r["index"]) for r in rows) == list(range(101))  # 101 = 7 batches of 16, padding dropped
    assert (tmp_path / "two/predictions.csv").read_bytes() == (tmp_path / "one/predictions.csv").read_bytes()

