"""Semantic FPN (mmseg fpn_r50): shapes, mmseg's head layout, ImageNet weights in torchvision's
and timm's key layouts, errors, and a short segmentation run."""

import re

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from conftest import small_spec
from fair_core.errors import FairError
from fair_core.fpn import FPN
from fair_core.hub import from_pretrained
from fair_core.runner import run
from fair_core.spec import parse_spec, validate_params


def build(num_classes=3, **params):
    return FPN(validate_params(FPN.Params, params, "model.params")).build(num_classes)


def save(state, path):
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def randomized(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s state with every float tensor random (layer scales and BN statistics included)."""
    generator = torch.Generator().manual_seed(0)
    return {k: (torch.rand(v.shape, generator=generator) + 0.5) * 0.1 if v.is_floating_point() else v
            for k, v in net.state_dict().items()}


def to_timm_convnext(state):
    """torchvision ConvNeXt keys -> timm's, as in timm/convnext_tiny.fb_in1k's model.safetensors."""
    block = {"0": "conv_dw", "2": "norm", "3": "mlp.fc1", "5": "mlp.fc2"}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"features\.0\.(\d)\.(\w+)", key):
            key = f"stem.{m[1]}.{m[2]}"
        elif (m := re.fullmatch(r"features\.(\d)\.(.+)", key)) and int(m[1]) % 2 == 0:
            key = f"stages.{int(m[1]) // 2}.downsample.{m[2]}"
        elif m := re.fullmatch(r"features\.(\d)\.(\d+)\.layer_scale", key):
            key, value = f"stages.{int(m[1]) // 2}.blocks.{m[2]}.gamma", value.flatten()
        elif m := re.fullmatch(r"features\.(\d)\.(\d+)\.block\.(\d)\.(\w+)", key):
            key = f"stages.{int(m[1]) // 2}.blocks.{m[2]}.{block[m[3]]}.{m[4]}"
        else:
            key = {"classifier.0.weight": "head.norm.weight", "classifier.0.bias": "head.norm.bias",
                   "classifier.2.weight": "head.fc.weight", "classifier.2.bias": "head.fc.bias"}[key]
        out[key] = value
    return out


def test_resnet_fpn_gives_logits_at_stride_4_and_neck_maps_at_strides_4_to_32():
    model = build(4, backbone="resnet18", neck_channels=32, head_channels=16).eval()
    x = torch.randn(2, 3, 64, 64)
    maps = model.encoder(x)
    assert isinstance(maps, list) and [tuple(m.shape) for m in maps] == [(2, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    assert model(x).shape == (2, 4, 16, 16)
    torch.testing.assert_close(model.head([m[1:] for m in maps]), model(x[1:]))  # per-sample slices decode alone
    assert model(torch.randn(1, 3, 72, 88)).shape == (1, 4, 18, 22)  # sizes not divisible by 32


def test_head_has_mmseg_scale_heads_and_dropout():
    head = build(5, backbone="resnet18", neck_channels=8, head_channels=4, dropout=0.2).head
    convs = [sum(isinstance(m, nn.Conv2d) for m in level.modules()) for level in head.scale_heads]
    upsamples = [sum(isinstance(m, nn.Upsample) for m in level.modules()) for level in head.scale_heads]
    assert convs == [1, 1, 2, 3] and upsamples == [0, 1, 2, 3]
    assert all(conv.bias is None for level in head.scale_heads for conv in level.modules() if isinstance(conv, nn.Conv2d))
    assert head.dropout.p == 0.2 and head.conv_seg.out_channels == 5 and head.conv_seg.kernel_size == (1, 1)


def test_convnext_fpn_loads_torchvision_and_timm_layouts_to_identical_outputs(tmp_path):
    reference = randomized(torchvision.models.convnext_tiny(weights=None))
    tv_file = save(reference, tmp_path / "tv.safetensors")
    timm_file = save(to_timm_convnext(reference), tmp_path / "timm.safetensors")
    tv = build(backbone="convnext_tiny", pretrained=str(tv_file), neck_channels=16, head_channels=8).eval()
    timm = build(backbone="convnext_tiny", pretrained=str(timm_file), neck_channels=16, head_channels=8).eval()
    backbone = tv.encoder.backbone
    torch.testing.assert_close(backbone.features[5][3].layer_scale, reference["features.5.3.layer_scale"])
    torch.testing.assert_close(backbone.norms[3].weight, reference["classifier.0.weight"])  # mmpretrain's norm3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = backbone(x), timm.encoder.backbone(x)
    assert [tuple(m.shape) for m in ours] == [(2, c, 64 // s, 64 // s) for c, s in ((96, 4), (192, 8), (384, 16), (768, 32))]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert tv(x).shape == (2, 3, 16, 16)


def test_deep_stem_is_resnet_c_and_loads_timm_deep_stem_weights(tmp_path):
    model = build(backbone="resnet18", deep_stem=True, neck_channels=8, head_channels=8)
    stem = model.encoder.backbone.conv1
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in stem if isinstance(m, nn.Conv2d)] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3, 16, 16)

    # timm's resnet-C file: torchvision's keys with conv1.weight replaced by the deep stem's, and the classifier
    state = randomized(torchvision.models.resnet18(weights=None))
    del state["conv1.weight"]
    stem_keys = {"conv1.0.weight": (32, 3, 3, 3), "conv1.3.weight": (32, 32, 3, 3), "conv1.6.weight": (64, 32, 3, 3)}
    for bn in ("conv1.1", "conv1.4"):
        stem_keys.update({f"{bn}.{k}": (32,) for k in ("weight", "bias", "running_mean", "running_var")})
    state.update({k: torch.rand(shape) for k, shape in stem_keys.items()})
    path = save(state, tmp_path / "resnet18c.safetensors")
    loaded = build(backbone="resnet18", deep_stem=True, pretrained=str(path)).encoder.backbone
    for key in [*stem_keys, "bn1.weight", "layer4.1.conv2.weight"]:
        torch.testing.assert_close(loaded.state_dict()[key], state[key])
    with pytest.raises(FairError, match=r"^model.params.pretrained: weights do not fit resnet18; missing \['conv1.weight'\]"):
        build(backbone="resnet18", pretrained=str(path))


def test_torchvision_resnet_weights_load_and_wrong_files_are_one_line_errors(tmp_path):
    reference = randomized(torchvision.models.resnet18(weights=None))
    path = save(reference, tmp_path / "resnet18.safetensors")
    backbone = build(backbone="resnet18", pretrained=str(path)).encoder.backbone
    torch.testing.assert_close(backbone.layer3[1].bn2.running_var, reference["layer3.1.bn2.running_var"])
    torch.testing.assert_close(backbone.conv1.weight, reference["conv1.weight"])

    with pytest.raises(FairError, match=r"^model.params.pretrained: weights do not fit resnet34; missing \['layer1.2"):
        build(backbone="resnet34", pretrained=str(path))
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FairError, match="^model.params.pretrained: cannot read"):
        build(backbone="resnet18", pretrained=str(tmp_path / "junk.safetensors"))
    with pytest.raises(FairError, match="^model.params.pretrained: no weights file"):
        build(backbone="resnet18", pretrained=str(tmp_path / "none.safetensors"))
    wider = {**reference, "conv1.weight": torch.zeros(64, 3, 5, 5)}
    with pytest.raises(FairError, match=r"wrong shapes \['conv1.weight'\]"):
        build(backbone="resnet18", pretrained=str(save(wider, tmp_path / "wider.safetensors")))


@pytest.mark.parametrize(("params", "repo"), [
    ({"backbone": "resnet18"}, "timm/resnet18.tv_in1k"),
    ({"backbone": "resnet50", "deep_stem": True}, "timm/resnet50c.gluon_in1k"),
    ({"backbone": "convnext_small"}, "timm/convnext_small.fb_in1k"),
])
def test_pretrained_true_without_a_cache_names_the_download(params, repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FairError) as error:
        build(**params, pretrained=True)
    assert str(error.value) == (f"model.params.pretrained: {repo} is not in the Hugging Face cache; download it once with "
                                f"`hf download {repo} model.safetensors` or give a local .safetensors path")


def test_deep_stem_needs_a_resnet_and_hub_weights_of_its_own():
    with pytest.raises(FairError, match="^model.params: .*deep_stem is a ResNet stem; convnext_tiny has none"):
        build(backbone="convnext_tiny", deep_stem=True)
    with pytest.raises(FairError, match="^model.params.pretrained: no ImageNet weights of resnet34 with the deep stem"):
        build(backbone="resnet34", deep_stem=True, pretrained=True)


def test_one_epoch_fpn_run_segments_from_pretrained(tmp_path):
    out = tmp_path / "run"
    spec = small_spec(out, task="segmentation",
                      data={"name": "synthetic_segmentation",
                            "params": {"image_size": 32, "train_size": 16, "val_size": 8, "test_size": 8}},
                      model={"name": "fpn", "params": {"backbone": "resnet18", "neck_channels": 32, "head_channels": 16}},
                      train={"epochs": 1, "batch_size": 8, "lr": 0.002, "seed": 0}, eval={"bootstrap": 0})
    result = run(parse_spec(spec))
    assert result["task"] == "segmentation" and result["overall"]["n"] == 8
    images = torch.rand(3, 3, 32, 32)
    masks = from_pretrained(out).segment(images)
    assert masks.shape == (3, 32, 32) and masks.dtype == torch.long
