"""The timm:, hf: and onnx: model sources of `fair evaluate`, offline on tiny models saved in the
test in each library's real format, checked against plain loops that run the same model with the
same library's preprocessing."""

import hashlib
import json
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fair_core.errors import FairError
from fair_core.model_sources import BUILTIN_SOURCES
from fair_core.model_sources.onnx_source import OnnxOptions, OnnxSource
from fair_core.model_sources.timm_source import TimmOptions, TimmSource
from fair_core.model_sources.transformers_source import TransformersSource
from fair_core.sources import NoOptions

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images(n=5, height=36, width=44, seed=0):
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def fake_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """``files`` laid out as the Hugging Face cache holds a download of ``repo`` at COMMIT."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name, path in files.items():
        (snapshot / name).write_bytes(path.read_bytes())
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_registered_prefixes():
    assert {p: s.extra for p, s in BUILTIN_SOURCES.items()} == {
        "timm": "fair-core[timm]", "hf": "fair-core[transformers]", "onnx": "fair-core[onnx]"}


@pytest.mark.parametrize("model, library, extra", [("timm:resnet18", "timm", "fair-core[timm]"),
                                                   ("hf:org/name", "transformers", "fair-core[transformers]"),
                                                   ("onnx:face.onnx", "onnxruntime", "fair-core[onnx]")])
def test_missing_library_is_the_install_hint(model, library, extra, monkeypatch):
    """Each source imports its library first, so a missing one is the extra to install, whatever the ref."""
    from fair_core.evaluate import load_model

    monkeypatch.setitem(sys.modules, library, None)  # `import library` raises ImportError
    with pytest.raises(FairError, match=re.escape(f"pip install '{extra}'")):
        load_model(model)


# --------------------------------------------------------------------------- timm

@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    """A 3-class timm model saved by timm's own save_for_hf, with a preprocessing that resizes,
    crops and normalises (input 40, crop_pct 0.8, bilinear)."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    folder = tmp_path_factory.mktemp("timm") / "model"
    model.pretrained_cfg = {**{k: v for k, v in model.pretrained_cfg.items() if not k.startswith("test_")},
                            "input_size": (3, 40, 40), "crop_pct": 0.8, "interpolation": "bilinear",
                            "mean": (0.3, 0.4, 0.5), "std": (0.2, 0.25, 0.3)}
    save_for_hf(model, str(folder), model_config={"label_names": ["cat", "dog", "bird"]}, safe_serialization=True)
    return folder


def timm_plain_loop(folder: Path, batch: torch.Tensor, use_test_size=True) -> torch.Tensor:
    """The saved model rebuilt by hand (architecture + safetensors state dict) and run image by
    image through timm's eval transform built from the saved pretrained_cfg."""
    import timm
    from timm.data import create_transform, resolve_data_config

    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"]).eval()
    model.load_state_dict(load_file(folder / "model.safetensors"))
    data_config = resolve_data_config(pretrained_cfg=config["pretrained_cfg"], use_test_size=use_test_size)
    assert tuple(data_config["input_size"]) == (3, 40, 40) and data_config["crop_pct"] == 0.8
    transform = create_transform(**data_config, is_training=False)
    with torch.no_grad():
        return torch.cat([model(transform(image).unsqueeze(0)) for image in batch])


def test_timm_folder_matches_plain_loop(timm_folder):
    loaded = TimmSource().load(str(timm_folder), TimmOptions())
    assert loaded.task == "classification" and loaded.labels == ("cat", "dog", "bird") and not loaded.multi_label
    assert loaded.input_size is None and isinstance(loaded.module, torch.nn.Module)
    assert loaded.source["kind"] == "timm" and loaded.source["sha256"] == sha256(timm_folder / "model.safetensors")
    assert loaded.source["architecture"] == "test_resnet"
    batch = images()
    with torch.no_grad():
        scores = loaded.scores(batch)
    expected = timm_plain_loop(timm_folder, batch)
    assert scores.shape == (5, 3)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_timm_embeddings_are_pre_logits(timm_folder):
    loaded = TimmSource().load(str(timm_folder), TimmOptions(task="verification"))
    assert loaded.task == "verification" and loaded.labels is None
    batch = images(3)
    with torch.no_grad():
        emb = loaded.embed(batch)
        inner = loaded.module.model
        x = loaded.module.preprocess(batch)
        expected = inner.forward_head(inner.forward_features(x), pre_logits=True)
    assert emb.shape == (3, inner.num_features)
    torch.testing.assert_close(emb, expected)


def test_timm_pickled_weights_refused(tmp_path, timm_folder):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((timm_folder / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(FairError, match=r"only safetensors .*pytorch_model\.bin"):
        TimmSource().load(str(folder), TimmOptions())


def test_timm_missing_folder_and_bad_config(tmp_path):
    pytest.importorskip("timm")
    with pytest.raises(FairError, match="no folder"):
        TimmSource().load(str(tmp_path / "absent" / "x"), TimmOptions())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FairError, match="not a timm model config"):
        TimmSource().load(str(tmp_path), TimmOptions())


def test_timm_hub_repo_from_cache(timm_folder, hf_cache):
    fake_cache(hf_cache, "someone/tiny", {"config.json": timm_folder / "config.json",
                                         "model.safetensors": timm_folder / "model.safetensors"})
    loaded = TimmSource().load("hf-hub:someone/tiny", TimmOptions())
    assert loaded.source["repo"] == "someone/tiny" and loaded.source["revision"] == COMMIT
    batch = images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.scores(batch), timm_plain_loop(timm_folder, batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(FairError, match=r"not in the local Hugging Face cache.*hf download someone/other"):
        TimmSource().load("hf-hub:someone/other", TimmOptions())


def test_timm_registry_name_from_cache_only(tmp_path, hf_cache):
    """A bare name: the weights timm's registry points at, from the cache; ImageNet synsets as labels."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    with pytest.raises(FairError, match=r"not in the local Hugging Face cache.*hf download timm/test_resnet\.r160_in1k"):
        TimmSource().load("test_resnet.r160_in1k", TimmOptions())
    torch.manual_seed(1)
    reference = timm.create_model("test_resnet.r160_in1k").eval()  # 1000 classes, the registry's config
    save_file(reference.state_dict(), tmp_path / "model.safetensors")
    fake_cache(hf_cache, "timm/test_resnet.r160_in1k", {"model.safetensors": tmp_path / "model.safetensors"})
    loaded = TimmSource().load("test_resnet.r160_in1k", TimmOptions(use_test_size=False))
    assert loaded.source["revision"] == COMMIT and loaded.source["repo"] == "timm/test_resnet.r160_in1k"
    assert loaded.labels == tuple(ImageNetInfo("imagenet-1k").label_names()) and loaded.labels[0] == "n01440764"
    transform = create_transform(**resolve_data_config(model=reference), is_training=False)
    batch = images(2, 64, 64)
    with torch.no_grad():
        expected = torch.cat([reference(transform(image).unsqueeze(0)) for image in batch])
        torch.testing.assert_close(loaded.scores(batch), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(FairError, match="unknown timm model"):
        TimmSource().load("no_such_model_xyz", TimmOptions())


# --------------------------------------------------------------------------- transformers

@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny ViT classifier and its image processor (resize to 32, its own mean/std), saved with
    save_pretrained (safetensors)."""
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    labels = {0: "Blond_Hair", 1: "Smiling", 2: "Young"}
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=16, num_labels=3, id2label=labels,
                                    label2id={v: k for k, v in labels.items()})
    folder = tmp_path_factory.mktemp("hf") / "vit"
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.3, 0.25]).save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def hf_plain_loop(folder: Path, batch: torch.Tensor) -> torch.Tensor:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        return torch.cat([model(**processor(images=image, do_rescale=False, return_tensors="pt")).logits
                          for image in batch])


def test_hf_folder_matches_plain_loop(hf_folder):
    loaded = TransformersSource().load(str(hf_folder), NoOptions())
    assert loaded.task == "classification" and loaded.labels == ("Blond_Hair", "Smiling", "Young")
    assert not loaded.multi_label and loaded.source["sha256"] == sha256(hf_folder / "model.safetensors")
    assert loaded.source["architecture"] == "ViTForImageClassification"
    batch = images()
    with torch.no_grad():
        scores = loaded.scores(batch)
    torch.testing.assert_close(scores, hf_plain_loop(hf_folder, batch), atol=1e-5, rtol=1e-5)


def test_hf_multi_label_and_hub_cache(hf_folder, tmp_path, hf_cache):
    config = json.loads((hf_folder / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (tmp_path / "config.json").write_text(json.dumps(config))
    snapshot = fake_cache(hf_cache, "someone/celeba-attrs", {
        "config.json": tmp_path / "config.json", "preprocessor_config.json": hf_folder / "preprocessor_config.json",
        "model.safetensors": hf_folder / "model.safetensors"})
    loaded = TransformersSource().load("someone/celeba-attrs", NoOptions())
    assert loaded.multi_label and loaded.source["revision"] == COMMIT and loaded.source["repo"] == "someone/celeba-attrs"
    batch = images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.scores(batch), hf_plain_loop(snapshot, batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(FairError, match="not in the local Hugging Face cache"):
        TransformersSource().load("someone/absent@main", NoOptions())


def test_hf_remote_code_refused_before_import(hf_folder, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((hf_folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "imported"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    for name in ("preprocessor_config.json", "model.safetensors"):
        (folder / name).write_bytes((hf_folder / name).read_bytes())
    with pytest.raises(FairError, match=r"auto_map: .*trust_remote_code"):
        TransformersSource().load(str(folder), NoOptions())
    assert not marker.exists()
    # a processor asking for its own code is refused too
    (folder / "config.json").write_text((hf_folder / "config.json").read_text())
    processor = json.loads((hf_folder / "preprocessor_config.json").read_text())
    processor["auto_map"] = {"AutoImageProcessor": "evil.EvilProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(FairError, match=r"preprocessor_config\.json: auto_map"):
        TransformersSource().load(str(folder), NoOptions())
    assert not marker.exists()


def test_hf_pickled_weights_refused(hf_folder, tmp_path):
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((hf_folder / name).read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(FairError, match=r"only safetensors .*pytorch_model\.bin"):
        TransformersSource().load(str(tmp_path), NoOptions())


def test_hf_segmenter_logits_at_image_size(tmp_path):
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1],
                                          mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=4,
                                          id2label={i: f"c{i}" for i in range(4)})
    transformers.SegformerForSemanticSegmentation(config).eval().save_pretrained(tmp_path)
    transformers.SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    loaded = TransformersSource().load(str(tmp_path), NoOptions())
    assert loaded.task == "segmentation" and loaded.labels == ("c0", "c1", "c2", "c3")
    batch = images(2, 24, 40)
    model = transformers.AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        scores = loaded.scores(batch)
        expected = []
        for image in batch:
            logits = model(**processor(images=image, do_rescale=False, return_tensors="pt")).logits
            expected.append(torch.nn.functional.interpolate(logits, size=(24, 40), mode="bilinear", align_corners=False))
    assert scores.shape == (2, 4, 24, 40)
    torch.testing.assert_close(scores, torch.cat(expected), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- onnx

class TinyEmbedder(torch.nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
        self.fc = torch.nn.Linear(6, dim)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def export(model, path: Path, size=16, dynamic_batch=True, batch=1):
    """torch.onnx.export with the TorchScript exporter (the dynamo one needs onnxscript)."""
    pytest.importorskip("onnx")
    try:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still there
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(batch, 3, size, size),), str(path), input_names=["input"],
                              output_names=["embedding"], dynamo=False,
                              dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}} if dynamic_batch else None)
    except Exception as exc:  # an exporter that is not there in this torch build
        pytest.skip(f"torch.onnx.export is unavailable: {type(exc).__name__}: {exc}")
    return path


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return TinyEmbedder().eval()


def insightface_input(batch: torch.Tensor) -> torch.Tensor:
    """What insightface feeds its recognisers: RGB, (pixel - 127.5) / 127.5 on 0-255 values."""
    return (batch * 255 - 127.5) / 127.5


def test_onnx_embedder_matches_torch(embedder, tmp_path):
    pytest.importorskip("onnxruntime")
    path = export(embedder, tmp_path / "face.onnx")
    loaded = OnnxSource().load(str(path), OnnxOptions())
    assert loaded.task == "verification" and loaded.labels is None and loaded.module is None
    assert loaded.input_size == 16  # the graph's own input size
    assert loaded.source["sha256"] == sha256(path) and (loaded.source["mean"], loaded.source["std"]) == (127.5, 127.5)
    batch = images(7, 16, 16)
    with torch.no_grad():
        expected = embedder(insightface_input(batch))
    torch.testing.assert_close(loaded.embed(batch), expected, atol=1e-4, rtol=1e-4)
    bgr = OnnxSource().load(str(path), OnnxOptions(channel_order="bgr", mean=100.0, std=50.0))
    with torch.no_grad():
        expected = embedder(((batch * 255 - 100.0) / 50.0).flip(1))
    torch.testing.assert_close(bgr.embed(batch), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(FairError, match="input_size 112: the model's input is 16 px"):
        OnnxSource().load(str(path), OnnxOptions(input_size=112))


def test_onnx_fixed_batch_and_resize(embedder, tmp_path):
    pytest.importorskip("onnxruntime")
    path = export(embedder, tmp_path / "fixed.onnx", dynamic_batch=False, batch=2)
    loaded = OnnxSource().load(str(path), OnnxOptions())
    batch = images(5, 20, 20)  # 5 images in a graph of batch 2; another size than its 16
    resized = torch.nn.functional.interpolate(batch, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        expected = embedder(insightface_input(resized))
    torch.testing.assert_close(loaded.embed(batch), expected, atol=1e-4, rtol=1e-4)


def test_onnx_classifier_labels(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    classifier = TinyEmbedder(dim=3).eval()
    path = export(classifier, tmp_path / "cls.onnx")
    loaded = OnnxSource().load(str(path), OnnxOptions(task="classification", labels=["a", "b", "c"]))
    assert loaded.task == "classification" and loaded.labels == ("a", "b", "c")
    batch = images(3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.scores(batch), classifier(insightface_input(batch)), atol=1e-4, rtol=1e-4)
    with pytest.raises(FairError, match="2 names for the model's 3 outputs"):
        OnnxSource().load(str(path), OnnxOptions(task="classification", labels=["a", "b"]))
    with pytest.raises(ValueError, match="only with task classification"):
        OnnxOptions(labels=["a"])


def test_onnx_graph_that_normalises_itself(tmp_path):
    """insightface's rule: Sub and Mul among the first nodes (an MXNet export) means mean 0, std 1."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    shift, scale = numpy_helper.from_array(np.float32(127.5), "shift"), numpy_helper.from_array(np.float32(0.0078125), "scale")
    nodes = [helper.make_node("Sub", ["data", "shift"], ["centred"], name="_minus0"),
             helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="_mul0"),
             helper.make_node("GlobalAveragePool", ["scaled"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["fc1"], name="flatten")]
    graph = helper.make_graph(nodes, "mxnet_like", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["n", 3])], [shift, scale])
    path = tmp_path / "mxnet.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    loaded = OnnxSource().load(str(path), OnnxOptions())
    assert (loaded.mean, loaded.std) == (0.0, 1.0) and loaded.input_size == 8
    batch = images(2, 8, 8)
    expected = ((batch * 255 - 127.5) * 0.0078125).mean(dim=(2, 3))
    torch.testing.assert_close(loaded.embed(batch), expected, atol=1e-4, rtol=1e-4)


def test_onnx_not_a_model(tmp_path):
    pytest.importorskip("onnxruntime")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(FairError, match="onnx"):
        OnnxSource().load(str(tmp_path / "junk.onnx"), OnnxOptions(mean=127.5, std=127.5))
    with pytest.raises(FairError, match="not found"):
        OnnxSource().load(str(tmp_path / "absent.onnx"), OnnxOptions())


def test_onnx_val_inst_on_synthetic_faces_equals_the_torch_model(tmp_path):
    """`fair evaluate` of a trained face model's encoder exported to ONNX gives the figures (RFW
    val, val-inst, per group) of `fair evaluate` on the run itself. The run normalises with mean
    0.5, std 0.25 on [0, 1]: (255 x - 127.5) / 63.75 on 0-255 values."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fair_face")
    from fair_core.evaluate import evaluate_model
    from fair_core.hub import from_pretrained
    from fair_core.runner import run
    from fair_core.spec import parse_spec

    spec = {"task": "verification",
            "data": {"name": "synthetic_faces", "target": "identity", "sensitive": ["group"],
                     "params": {"image_size": 16, "train_identities": 8, "eval_identities": 6, "eval_images": 4}},
            "model": {"name": "small_embedding_cnn", "params": {"width": 8, "embedding_dim": 16}},
            "method": {"name": "erm"}, "train": {"epochs": 1, "batch_size": 32, "seed": 0},
            "eval": {"split": "test", "params": {"fpr": 0.01, "instance_fpr": 0.01}}, "output_dir": str(tmp_path / "run")}
    run(parse_spec(spec))
    model = from_pretrained(tmp_path / "run")
    assert (model.preprocessing.mean, model.preprocessing.std) == ((0.5,) * 3, (0.25,) * 3)
    path = export(model.network.encoder.eval(), tmp_path / "encoder.onnx", size=16)
    torch_result = evaluate_model(str(tmp_path / "run"), parse_spec({**spec, "output_dir": str(tmp_path / "eval-run")}))
    onnx_result = evaluate_model(f"onnx:{path}", parse_spec({**spec, "output_dir": str(tmp_path / "eval-onnx")}),
                                 options={"std": 63.75})
    assert onnx_result["evaluation"]["source"]["sha256"] == sha256(path)
    assert {"rfw_val_std", "inst_tpr_std", "inst_fpr_std"} <= set(torch_result["fairness"])
    for section in ("overall", "groups", "fairness"):
        assert numbers(onnx_result[section]) == pytest.approx(numbers(torch_result[section]), rel=1e-5, abs=1e-6, nan_ok=True)


def numbers(value):
    """The numbers of a metrics.json section, flattened in order (NaN kept)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    return [float(value)] if isinstance(value, (int, float)) and not math.isinf(value) else []
