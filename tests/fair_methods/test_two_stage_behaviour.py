"""The two-stage methods against the base model they start from, on the synthetic biased dataset:
the short recipe (short_recipe.json beside this file: the quickstart's data and model at a constant
learning rate, 8 epochs, train seed 0) trains the base once; each method starts from
that very model (``method.params.base``), so base, seed and data are the same.

What is asserted held at train = data seeds 0, 1 and 2 on this project's CI machine (the figures,
from the pilot runs, are in each method's docstring and the closing note of the issue):
FDR-EO cuts the base's equalized-odds difference, MFD's student beats its teacher's worst-group
accuracy, FairReprogram and FAAP lower the within-class leakage of the protected attribute from
the class scores (:func:`fair_core.leakage.model_leakage`).
"""

from pathlib import Path

import pytest

from fair_core.hub import from_pretrained
from fair_core.leakage import model_leakage
from fair_core.runner import run
from fair_core.spec import load_spec
from fair_data.synthetic import Synthetic

EPOCHS = 8
MFD_MARGIN = 0.1  # the student's worst-group gain was +0.308/+0.170/+0.112 at seeds 0/1/2
LEAKAGE_MARGIN = 0.02  # leakage fell by 0.218/0.210/0.033 (FairReprogram), 0.190/0.038/0.041 (FAAP)


def run_spec(folder, method, *overrides):
    return run(load_spec(Path(__file__).with_name("short_recipe.json"),
                         [f"method.name={method}", f"train.epochs={EPOCHS}", "eval.bootstrap=0", *overrides], str(folder)))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "erm"
    return folder, run_spec(folder, "erm")


def two_stage(tmp_path, base, method, *overrides):
    return run_spec(tmp_path / method, method, f"method.params.base={base[0]}", *overrides)


def score_leakage(folder) -> float:
    test = Synthetic(Synthetic.Params(bias_ratio=0.95)).load("test", None, None)
    return model_leakage(from_pretrained(folder), test)["scores"]


def test_fdr_eo_lowers_the_equalized_odds_difference_of_its_base(tmp_path, base):
    result = two_stage(tmp_path, base, "fdr", "method.params.constraint=eo", 'method.params.extra_splits=["val"]')
    # 0.078/0.082/0.118 against the base's 0.820/0.626/0.394 at seeds 0/1/2
    assert result["fairness"]["eod"] < 0.5 * base[1]["fairness"]["eod"], (result["fairness"], base[1]["fairness"])


def test_mfd_student_beats_its_teacher_worst_group_accuracy(tmp_path, base):
    result = two_stage(tmp_path, base, "mfd")
    gain = result["fairness"]["worst_group_accuracy"] - base[1]["fairness"]["worst_group_accuracy"]
    assert gain >= MFD_MARGIN, (result["fairness"], base[1]["fairness"])


@pytest.mark.parametrize(("method", "overrides"), [
    ("fair_reprogram", ("method.params.epochs=10", "method.params.lr=0.01")),
    ("faap", ("method.params.epochs=5",)),
])
def test_post_processing_lowers_the_leakage_of_the_protected_attribute(tmp_path, base, method, overrides):
    two_stage(tmp_path, base, method, *overrides)
    assert score_leakage(tmp_path / method) < score_leakage(base[0]) - LEAKAGE_MARGIN
