"""Built-in backbones."""

import pytest
import torch
from safetensors.torch import save_file

from fair_core.errors import FairError
from fair_core.models import ResNet18, SmallCNN


def test_small_cnn_features_and_logits():
    model = SmallCNN(SmallCNN.Params(width=8)).build(num_classes=3)
    x = torch.randn(5, 3, 24, 24)
    assert model.features(x).shape == (5, 32) and model(x).shape == (5, 3)


def test_resnet18_cifar_stem_and_local_pretrained_weights(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "w.safetensors")
    model = ResNet18(ResNet18.Params(pretrained=tmp_path / "w.safetensors")).build(num_classes=2)
    torch.testing.assert_close(model.encoder.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 2)
    cifar = ResNet18(ResNet18.Params(cifar_stem=True)).build(num_classes=10)
    assert cifar.encoder.conv1.kernel_size == (3, 3) and cifar.features(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_missing_pretrained_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FairError, match="timm/resnet18.tv_in1k is not in the Hugging Face cache"):
        ResNet18(ResNet18.Params(pretrained=True)).build(num_classes=2)
    with pytest.raises(FairError, match="no weights file"):
        ResNet18(ResNet18.Params(pretrained=tmp_path / "nope.safetensors")).build(num_classes=2)
