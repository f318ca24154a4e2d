"""The synthetic biased dataset: its construction, and that it really is biased for ERM."""

import torch

from conftest import ROOT
from fair_core.runner import run
from fair_core.spec import load_spec
from fair_data.synthetic import LUMA, Synthetic, SyntheticParams, render


def test_training_split_is_skewed_at_bias_ratio_and_test_is_balanced():
    builder = Synthetic(SyntheticParams(train_size=4000, test_size=400, num_classes=4))
    train = builder.load("train", None, None, train=True)
    counts = train.cell_counts().double()  # [class, group]; group 1 = grayscale
    p_gray = counts[:, 1] / counts.sum(1)
    torch.testing.assert_close(p_gray[0::2], torch.full((2,), 0.95, dtype=torch.double), atol=0.02, rtol=0)
    torch.testing.assert_close(p_gray[1::2], torch.full((2,), 0.05, dtype=torch.double), atol=0.02, rtol=0)
    test = builder.load("test", None, None)
    assert torch.all(test.cell_counts() == 50)
    assert test.info.class_names == ("square", "circle", "triangle", "cross")
    assert test.info.group_names == ("colour", "grayscale")


def test_generation_is_seeded_and_grayscale_images_are_gray():
    a = Synthetic(SyntheticParams(train_size=64, seed=1)).read_split("train")
    b = Synthetic(SyntheticParams(train_size=64, seed=1)).read_split("train")
    c = Synthetic(SyntheticParams(train_size=64, seed=2)).read_split("train")
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    gray = a.attributes["color"] == 1
    images = a.images
    assert images.shape == (64, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert torch.allclose(images[gray][:, 0], images[gray][:, 1]) and torch.allclose(images[gray][:, 1], images[gray][:, 2])
    assert not torch.allclose(images[~gray][:, 0], images[~gray][:, 1])


def test_shape_is_a_strong_colour_edge_but_a_weak_luminance_edge():
    params = SyntheticParams(noise=0.0, luminance_contrast=(0.05, 0.1), chroma=0.3)
    images = render(torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long), params, torch.Generator().manual_seed(0))
    for image in images:
        colours = image.reshape(3, -1).T.unique(dim=0)
        assert len(colours) == 2  # background and shape
        luminance_step = (colours[0] - colours[1]) @ LUMA
        assert 0.05 - 1e-4 <= luminance_step.abs() <= 0.1 + 1e-4
        assert (colours[0] - colours[1]).norm() > 0.4  # far apart in colour


def test_erm_shows_a_group_accuracy_gap_of_at_least_10_points(tmp_path):
    spec = load_spec(ROOT / "examples/quickstart.json", ["eval.bootstrap=0"], str(tmp_path / "erm"))
    result = run(spec)
    accuracy = {g["group"]: g["accuracy"] for g in result["groups"]}
    assert accuracy["colour"] - accuracy["grayscale"] >= 0.10, accuracy
    assert result["fairness"]["accuracy_gap"] >= 0.10
