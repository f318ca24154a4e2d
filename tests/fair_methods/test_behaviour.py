"""Each method against ERM on the synthetic biased dataset, same seed and budget.

Budget: the short recipe (short_recipe.json beside this file: the quickstart's data and model, a
constant learning rate) at 12 epochs. The quickstart itself now trains longer with a cosine
schedule (issue #17, the README's benchmark); these margins were measured at this recipe. Worst-group accuracy is the accuracy of the
grayscale group (ERM: ~0.80 at this budget). Margins were chosen from seeds 0-2 (see
bench/methods_synthetic.py and the issue notes) and lowered to the smallest gain seen on either
of two machines: on an AMD EPYC one (data seed 0, train seeds 0/1/2) ERM's worst group is
0.844/0.777/0.793 and the gains are uw +0.029/+0.148/+0.117, bcbb +0.046/+0.034/+0.128,
os +0.096/+0.121/+0.071, each with a smaller accuracy gap; the test runs train seed 0.

US trains on ~10x fewer images, so it gets ERM's number of optimisation steps (8x the epochs),
and its recipe (examples/us.json) is the study's: weight decay 1e-4 and the learning rate x0.1 at
1/3 and 2/3 of the epochs. It is compared with ERM trained with that same recipe, and so is DI:
at a constant learning rate its gain over ERM is within the run-to-run noise of the hardware
(worst-group +0.01/+0.09 at train seeds 1/2 but -0.02 at seed 0 on one machine, +0.02 or more on
another), under the study's recipe it is +0.08/+0.13/+0.05 (train seeds 0/1/2, data seed 0).
"""

import json
from pathlib import Path

import pytest

from fair_core.runner import run
from fair_core.spec import load_spec

EPOCHS = 12
SHORT_RECIPE = Path(__file__).with_name("short_recipe.json")


def run_method(tmp_path, name, *overrides):
    spec = load_spec(SHORT_RECIPE,
                     [f"method.name={name}", f"train.epochs={EPOCHS}", "eval.bootstrap=0", *overrides],
                     str(tmp_path / name))
    return run(spec)


@pytest.fixture(scope="module")
def erm(tmp_path_factory):
    return run_method(tmp_path_factory.mktemp("erm"), "erm")


STUDY_RECIPE = ("train.weight_decay=1e-4", "train.scheduler=multistep")


@pytest.fixture(scope="module")
def erm_study_recipe(tmp_path_factory):
    return run_method(tmp_path_factory.mktemp("erm_study"), "erm", *STUDY_RECIPE)


def test_us_improves_worst_group_accuracy_over_erm_with_the_same_recipe(tmp_path, erm_study_recipe):
    """With a constant learning rate, US's final epoch on its ~400 images is noisy: worst-group
    0.78/0.76/0.88 against ERM's 0.80/0.80/0.77 (train seeds 0/1/2). With the study's decay, US
    reaches 0.94/0.93/0.93 against ERM's 0.65/0.67/0.74 under the same recipe (data seed 0), and
    0.93/0.93 against 0.74/0.74 with data seed = train seed = 1, 2."""
    baseline = erm_study_recipe
    result = run_method(tmp_path, "us", f"train.epochs={EPOCHS * 8}", *STUDY_RECIPE)
    gain = result["fairness"]["worst_group_accuracy"] - baseline["fairness"]["worst_group_accuracy"]
    assert gain >= 0.1, (result["fairness"], baseline["fairness"])
    assert result["fairness"]["accuracy_gap"] <= 0.5 * baseline["fairness"]["accuracy_gap"]


@pytest.mark.parametrize("method,overrides,margin", [
    ("os", [], 0.08),
    ("uw", [], 0.02),
    ("bm", ["method.params.final_head_sampling=uw"], 0.03),
    ("bcbb", [], 0.03),
    # FLAC is not here: its gain at this recipe did not hold on every machine (see its docstring);
    # test_formulas.py checks its loss's direction, the test below its frozen bias network
])
def test_method_improves_worst_group_accuracy_over_erm(tmp_path, erm, method, overrides, margin):
    result = run_method(tmp_path, method, *overrides)
    gain = result["fairness"]["worst_group_accuracy"] - erm["fairness"]["worst_group_accuracy"]
    assert gain >= margin, (method, result["fairness"], erm["fairness"])
    assert result["fairness"]["accuracy_gap"] < erm["fairness"]["accuracy_gap"]


def test_di_improves_worst_group_accuracy_over_erm_with_the_same_recipe(tmp_path, erm_study_recipe):
    result = run_method(tmp_path, "di", *STUDY_RECIPE)
    gain = result["fairness"]["worst_group_accuracy"] - erm_study_recipe["fairness"]["worst_group_accuracy"]
    assert gain >= 0.03, (result["fairness"], erm_study_recipe["fairness"])
    assert result["fairness"]["accuracy_gap"] < erm_study_recipe["fairness"]["accuracy_gap"]


def domain_accuracy_in_main_epochs(output_dir):
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    values = [r["train/domain_accuracy"] for r in records if r.get("train/main_phase") == 1.0 and r["step"] > 63]
    return sum(values) / len(values)


def test_adv_drives_the_domain_head_toward_chance(tmp_path):
    """The mechanism: while the encoder trains against it, the domain head's accuracy on the
    protected attribute (chance: 0.5) falls, whereas without the confusion loss it stays ~1."""
    run_method(tmp_path / "confused", "adv", "train.log_every=1")
    run_method(tmp_path / "plain", "adv", "train.log_every=1", "method.params.alpha=0")
    confused = domain_accuracy_in_main_epochs(tmp_path / "confused/adv")
    plain = domain_accuracy_in_main_epochs(tmp_path / "plain/adv")
    assert plain > 0.95 and confused < 0.75, (confused, plain)


def test_flac_trains_a_frozen_bias_network_that_captures_the_group(tmp_path):
    import torch

    from fair_core.checkpoint import load_checkpoint
    from fair_core.models import SmallCNN
    from fair_data.synthetic import Synthetic

    run_method(tmp_path, "flac", "train.epochs=1")
    state = load_checkpoint(tmp_path / "flac/checkpoint.safetensors")["method"]["bias_net"]
    bias_net = SmallCNN(SmallCNN.Params(width=16)).build(num_classes=2)
    bias_net.load_state_dict(state)
    test = Synthetic(Synthetic.Params(bias_ratio=0.95)).load("test", None, None)
    images = torch.stack([test[i]["image"] for i in range(400)])
    with torch.no_grad():
        accuracy = (bias_net.eval()(images).argmax(1) == test.groups[:400]).float().mean().item()
    assert accuracy > 0.9  # it recognises colour vs grayscale: the bias FLAC suppresses


def zero_image_spread(run_dir) -> float:
    """The std over classes of the trained model's scores for the zero image (normalised space;
    segmentation: of the spatial mean of its logits)."""
    import torch

    from fair_core.hub import from_pretrained

    model = from_pretrained(run_dir)
    size = model.preprocessing.image_size
    with torch.no_grad():
        logits = model.network.eval()(torch.zeros(1, 3, size, size)).float()
    return (logits.mean((-2, -1)) if logits.dim() == 4 else logits).std(dim=1).item()


def test_zut_makes_the_zero_image_uninformative_for_the_classifier(tmp_path, erm):
    """ZUT's loss drives the zero image's class scores together: their std (evaluation mode) fell
    from 3.07/3.86/3.47 (ERM) to 0.016/0.010/0.004 (short_recipe.json, 8 epochs, train
    seeds 0/1/2). ZUT targets class bias, not this dataset's colour shortcut: worst-group accuracy
    went from 0.573/0.714/0.706 to 0.520/0.693/0.681 and accuracy from 0.780/0.857/0.853 to
    0.759/0.842/0.841, so only the mechanism is asserted."""
    result = run_method(tmp_path, "zut")
    assert zero_image_spread(result["spec"]["output_dir"]) < 0.25 * zero_image_spread(erm["spec"]["output_dir"])
