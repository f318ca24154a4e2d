"""IResNet backbones (architecture against insightface's layout, the frozen BN1d, pretrained
loading) and the insightface weight converter (renaming, checks, refusing pickled objects)."""

import hashlib

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file

from fair_core import FairError
from fair_face.iresnet import IRESNET_BUILDERS, IResNet18, IResNet34
from fair_face.models import EmbeddingHead
from fair_face.weights import convert_insightface_weights

LAYERS = {"iresnet18": [2, 2, 2, 2], "iresnet34": [3, 4, 6, 3], "iresnet50": [3, 4, 14, 3], "iresnet100": [3, 13, 30, 3]}
TINY = {"width": 8, "input_size": 32, "embedding_dim": 16}


def hand_parameter_count(layers, width=64, input_size=112, embedding_dim=512):
    """Learnable numbers of insightface's IResNet, counted from its layout: conv weights, 2 per BN
    channel, 1 per PReLU channel, the Linear's weight and bias (BN1d's frozen weight included)."""
    count = 3 * width * 9 + 2 * width + width  # stem conv3x3, BN, PReLU
    cin = width
    for stage, blocks in enumerate(layers):
        c = width * 2**stage
        for block in range(blocks):
            count += 2 * cin + cin * c * 9 + 2 * c + c + c * c * 9 + 2 * c  # bn1 conv1 bn2 prelu conv2 bn3
            if block == 0:
                count += cin * c + 2 * c  # downsample conv1x1 + BN
            cin = c
    spatial = input_size // 16
    return count + 2 * cin + cin * spatial**2 * embedding_dim + embedding_dim + 2 * embedding_dim


@pytest.mark.parametrize("arch", list(LAYERS))
def test_block_structure_and_parameter_count_follow_insightface(arch):
    with torch.device("meta"):
        model = IRESNET_BUILDERS[arch](IRESNET_BUILDERS[arch].Params()).build(num_classes=10)
    body, head = model.encoder.body, model.encoder[-1]
    stages = [body.layer1, body.layer2, body.layer3, body.layer4]
    assert [len(s) for s in stages] == LAYERS[arch]
    for stage, width in zip(stages, (64, 128, 256, 512), strict=True):
        assert [b.downsample is not None for b in stage] == [True] + [False] * (len(stage) - 1)
        assert stage[0].conv2.stride == (2, 2) and stage[0].conv1.stride == (1, 1) and stage[0].bn3.num_features == width
    assert isinstance(head, EmbeddingHead) and head.fc.in_features == 25088 and head.fc.out_features == 512
    encoder_count = sum(p.numel() for p in model.encoder.parameters())
    assert encoder_count == hand_parameter_count(LAYERS[arch])
    if arch == "iresnet50":
        assert encoder_count == 43_590_848  # insightface's r50 at 112 px: the "43.6M" of its model zoo


def test_tiny_model_shapes_and_stage4_map():
    model = IResNet18(IResNet18.Params(**TINY)).build(num_classes=5)
    images = torch.rand(3, 3, 32, 32)
    logits, features = model(images, with_features=True)
    assert logits.shape == (3, 5) and features.shape == (3, 16)
    assert model.encoder[:-1](images).shape == (3, 64, 2, 2)  # 8 * width channels, input / 16
    assert sum(p.numel() for p in model.encoder.parameters()) == hand_parameter_count([2, 2, 2, 2], 8, 32, 16)


def test_initialisation_is_insightfaces():
    model = IResNet18(IResNet18.Params(width=16, input_size=32)).build(num_classes=2)
    conv = model.encoder.body.layer4[1].conv2.weight  # 128 x 128 x 3 x 3 draws
    assert conv.std().item() == pytest.approx(0.1, rel=0.03) and abs(conv.mean().item()) < 0.003
    bn = model.encoder.body.layer2[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(model.encoder.body.prelu.weight == 0.25)


def test_embedding_batchnorm_weight_stays_frozen_at_one():
    torch.manual_seed(0)
    model = IResNet18(IResNet18.Params(**TINY)).build(num_classes=4)
    frozen = model.encoder.head.features.weight
    assert not frozen.requires_grad and torch.all(frozen == 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    before = model.encoder.head.features.bias.detach().clone()
    for _ in range(2):
        loss = F.cross_entropy(model(torch.rand(6, 3, 32, 32)), torch.arange(6) % 4)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert torch.all(frozen == 1)
    assert not torch.equal(model.encoder.head.features.bias, before)  # the bias trains


def test_params_refuse_unknown_sources_and_sizes():
    IResNet18.Params(pretrained="owner/face-model")  # a Hub repo id
    IResNet18.Params(pretrained="weights/r18.safetensors")
    for bad in ({"pretrained": True}, {"pretrained": "weights/r18.pth"}, {"input_size": 100}, {"width": 1},
                {"depth": 18}):
        with pytest.raises(ValidationError):
            IResNet18.Params(**bad)


def test_pretrained_round_trip_from_a_file_and_from_the_hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(1)
    source = IResNet18(IResNet18.Params(**TINY)).build(num_classes=3)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, str(path))
    loaded = IResNet18(IResNet18.Params(pretrained=str(path), **TINY)).build(num_classes=3)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key

    # a repo id is read from the local Hugging Face cache (HF_HUB_CACHE), never downloaded
    snapshot = tmp_path / "hub" / "models--owner--tiny-r18" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(path.read_bytes())
    (tmp_path / "hub" / "models--owner--tiny-r18" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--tiny-r18" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from_hub = IResNet18(IResNet18.Params(pretrained="owner/tiny-r18", **TINY)).build(num_classes=3)
    assert torch.equal(from_hub.encoder.head.fc.weight, source.encoder.head.fc.weight)
    with pytest.raises(FairError, match="owner/absent is not in the Hugging Face cache"):
        IResNet18(IResNet18.Params(pretrained="owner/absent", **TINY)).build(num_classes=3)


def test_pretrained_errors_name_the_first_offending_key_and_the_file(tmp_path):
    state = {k: v.contiguous() for k, v in IResNet18(IResNet18.Params(**TINY)).build(2).encoder.state_dict().items()}
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "body.layer2.1.conv1.weight"},
                    "missing key body.layer2.1.conv1.weight"),
        "unexpected": ({**state, "body.layer5.0.conv1.weight": torch.zeros(1)}, "unexpected key body.layer5.0.conv1.weight"),
        "shape": ({**state, "head.fc.weight": torch.zeros(16, 10)}, r"head.fc.weight has shape \(16, 10\), expected \(16, 256\)"),
        "insightface": ({k.split(".", 1)[1]: v for k, v in state.items()}, "convert it first with `fair face convert-weights`"),
    }
    for name, (tensors, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(FairError, match=message) as caught:
            IResNet18(IResNet18.Params(pretrained=str(path), **TINY)).build(num_classes=2)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(FairError, match="no weights file"):
        IResNet18(IResNet18.Params(pretrained=str(tmp_path / "absent.safetensors"), **TINY)).build(num_classes=2)


# --------------------------------------------------------------------------- the converter
def insightface_state(layers, width, spatial, embedding_dim, seed=0):
    """A random state dict in insightface's iresnet.py layout and names, written from that layout
    (not from our model), with BatchNorm statistics that matter at eval time."""
    generator = torch.Generator().manual_seed(seed)

    def bn(prefix, c, state):
        state[f"{prefix}.weight"] = 1 + 0.2 * torch.randn(c, generator=generator)
        state[f"{prefix}.bias"] = 0.2 * torch.randn(c, generator=generator)
        state[f"{prefix}.running_mean"] = 0.2 * torch.randn(c, generator=generator)
        state[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=generator)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    def conv(shape):
        return torch.randn(*shape, generator=generator) / (shape[1] * shape[2] * shape[3]) ** 0.5

    state = {"conv1.weight": conv((width, 3, 3, 3))}
    bn("bn1", width, state)
    state["prelu.weight"] = 0.25 + 0.1 * torch.rand(width, generator=generator)
    cin = width
    for stage, blocks in enumerate(layers, start=1):
        c = width * 2 ** (stage - 1)
        for j in range(blocks):
            p = f"layer{stage}.{j}"
            bn(f"{p}.bn1", cin, state)
            state[f"{p}.conv1.weight"] = conv((c, cin, 3, 3))
            bn(f"{p}.bn2", c, state)
            state[f"{p}.prelu.weight"] = 0.25 + 0.1 * torch.rand(c, generator=generator)
            state[f"{p}.conv2.weight"] = conv((c, c, 3, 3))
            bn(f"{p}.bn3", c, state)
            if j == 0:
                state[f"{p}.downsample.0.weight"] = conv((c, cin, 1, 1))
                bn(f"{p}.downsample.1", c, state)
            cin = c
    bn("bn2", cin, state)
    state["fc.weight"] = torch.randn(embedding_dim, cin * spatial * spatial, generator=generator) / (cin * spatial**2) ** 0.5
    state["fc.bias"] = 0.1 * torch.randn(embedding_dim, generator=generator)
    bn("features", embedding_dim, state)
    state["features.weight"] = torch.ones(embedding_dim)
    return state


def insightface_forward(state, images, layers):
    """insightface's IResNet forward in eval mode, written with functional ops on its names."""

    def bn(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)

    x = F.prelu(bn(F.conv2d(images, state["conv1.weight"], padding=1), "bn1"), state["prelu.weight"])
    for stage, blocks in enumerate(layers, start=1):
        for j in range(blocks):
            p, stride = f"layer{stage}.{j}", 2 if j == 0 else 1
            out = bn(F.conv2d(bn(x, f"{p}.bn1"), state[f"{p}.conv1.weight"], padding=1), f"{p}.bn2")
            out = F.prelu(out, state[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn3")
            shortcut = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1") if j == 0 else x
            x = out + shortcut
    x = F.linear(bn(x, "bn2").flatten(1), state["fc.weight"], state["fc.bias"])
    return bn(x, "features")


def test_converted_insightface_weights_give_insightfaces_outputs(tmp_path):
    state = insightface_state([2, 2, 2, 2], width=8, spatial=2, embedding_dim=16)
    src, dst = tmp_path / "backbone.pth", tmp_path / "out" / "r18.safetensors"
    torch.save(state, src)
    report = convert_insightface_weights(src, dst, "iresnet18", **TINY)
    assert report["tensors"] == len(state) and report["counters_filled"] == 0
    assert report["parameters"] == hand_parameter_count([2, 2, 2, 2], 8, 32, 16)
    assert report["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    with safe_open(str(dst), "pt") as f:
        metadata = f.metadata()
        assert set(f.keys()) == {("body." if not k.startswith(("bn2.", "fc.", "features.")) else "head.") + k for k in state}
    assert metadata["arch"] == "iresnet18" and metadata["source_sha256"] == report["source_sha256"]
    assert [p.name for p in dst.parent.iterdir()] == ["r18.safetensors"]  # no temporary file left

    model = IResNet18(IResNet18.Params(pretrained=str(dst), **TINY)).build(num_classes=7).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), insightface_forward(state, images, [2, 2, 2, 2]),
                                   rtol=1e-4, atol=1e-4)


def test_converter_accepts_arcface_torch_resume_checkpoints_and_fills_missing_counters(tmp_path):
    state = insightface_state([2, 2, 2, 2], width=8, spatial=2, embedding_dim=16)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # an older torch's state dict
    src = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"epoch": 3, "global_step": 900, "state_dict_backbone": state,
                "state_optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, src)
    report = convert_insightface_weights(src, tmp_path / "r18.safetensors", "iresnet18", **TINY)
    assert report["counters_filled"] == sum(1 for k in state if k.endswith("running_mean"))
    assert report["tensors"] == len(state) + report["counters_filled"]


class RunsWhenUnpickled:
    """Pickles as a call of ``Path.touch(marker)``: loading it with a plain pickle would create the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_converter_refuses_pickled_objects_without_running_them(tmp_path):
    marker = tmp_path / "executed"
    src = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsWhenUnpickled(marker)}, src)
    with pytest.raises(FairError, match="not a plain PyTorch state dict") as caught:
        convert_insightface_weights(src, tmp_path / "out.safetensors", "iresnet18", **TINY)
    assert not marker.exists() and str(src) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_converter_errors_are_one_line_naming_the_file(tmp_path):
    state = insightface_state([2, 2, 2, 2], width=8, spatial=2, embedding_dim=16)
    dst = tmp_path / "out.safetensors"
    cases = {
        "number": ({**state, "fc.scale": 3}, "\"fc.scale\" holds a value of type int, not a tensor"),
        "list": ([torch.zeros(1)], "holds a value of type list, not a flat dict of tensors"),
        "ddp": ({f"module.{k}": v for k, v in state.items()}, "is not a key of an insightface IResNet"),
        "missing": ({k: v for k, v in state.items() if not k.startswith("layer3.1.conv2")}, "missing layer3.1.conv2.weight"),
        "shape": ({**state, "fc.weight": torch.zeros(8, 256)}, r"fc.weight has shape \(8, 256\), iresnet18 .* expects \(16, 256\)"),
        "truncated": (None, "not a plain PyTorch state dict"),
    }
    for name, (content, message) in cases.items():
        src = tmp_path / f"{name}.pth"
        if content is None:
            torch.save(state, src)
            src.write_bytes(src.read_bytes()[:2000])
        else:
            torch.save(content, src)
        with pytest.raises(FairError, match=message) as caught:
            convert_insightface_weights(src, dst, "iresnet18", **TINY)
        assert str(src) in str(caught.value) and "\n" not in str(caught.value), name
        assert not dst.exists()
    deeper = tmp_path / "r34.pth"
    torch.save(insightface_state([3, 4, 6, 3], width=8, spatial=2, embedding_dim=16), deeper)
    with pytest.raises(FairError, match="the file holds an iresnet34: pass --arch iresnet34"):
        convert_insightface_weights(deeper, dst, "iresnet18", **TINY)
    assert convert_insightface_weights(deeper, dst, "iresnet34", **TINY)["arch"] == "iresnet34"
    IResNet34(IResNet34.Params(pretrained=str(dst), **TINY)).build(num_classes=2)
    with pytest.raises(FairError, match="--arch: unknown architecture \"resnet18\"; allowed: iresnet18, iresnet34"):
        convert_insightface_weights(deeper, dst, "resnet18")
    with pytest.raises(FairError, match="must be a .safetensors file"):
        convert_insightface_weights(deeper, tmp_path / "out.pth", "iresnet34", **TINY)
    with pytest.raises(FairError, match="not found"):
        convert_insightface_weights(tmp_path / "absent.pth", dst, "iresnet34", **TINY)
