"""Face methods against a margin baseline on the synthetic identities, same seed, recipe and budget.

`bench/faces_synthetic.py` ran every method's example (examples/faces_*.json: one recipe, only the
method differs) at seeds 0, 1 and 2 (seed = train seed = data seed), and variants that take DDL
apart. What held on all three seeds is asserted here, at seed 0:

* ddl against ``margin`` with DDL's own head (ArcFace, m 0.5): higher TPR and worst-group TPR, a
  smaller TPR gap and per-identity TPR std at the examples' operating point (FPR 1e-3). DDL
  also beat the CosFace example on all of them (ArcFace alone already does, on every seed).

Why DDL wins, measured (mean over the 3 seeds, worst-group TPR): CosFace 0.596, ArcFace 0.679,
ArcFace on DDL's batches of K images per identity drawn from the groups in turn 0.723, DDL 0.753.
Its distribution losses improved on the same head and batches on 2 seeds of 3 only, so that part
is not asserted; most of the gain is the ArcFace head and the group-balanced batches.

Not asserted, because it did not hold on every seed: multibranch's gains. MixFairFace lowered the
TPR gap on every seed only by lowering every group's TPR (its undetached identity bias stalls
training here; its docstring says why), which is not a fairness gain, so its test asserts its
mechanism only (test_mixfairface.py).
"""

import json

import pytest

from conftest import ROOT
from fair_core.runner import run
from fair_core.spec import load_spec

SEED = 0
ARCFACE = ["method.params.head=arcface", "method.params.m=0.5"]  # DDL's head


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("face-behaviour")
    outcome = {}
    for method in ("margin", "ddl"):
        overrides = [f"train.seed={SEED}", f"data.params.seed={SEED}", *(ARCFACE if method == "margin" else [])]
        spec = load_spec(ROOT / "examples" / f"faces_{method}.json", overrides, str(out / method))
        outcome[method] = run(spec)
    return outcome


def test_ddl_verifies_the_minority_better_than_arcface_alone(results):
    margin, ddl = results["margin"], results["ddl"]
    assert ddl["overall"]["tpr_at_fpr"] > margin["overall"]["tpr_at_fpr"]
    assert ddl["fairness"]["worst_group_tpr"] > margin["fairness"]["worst_group_tpr"]
    assert ddl["fairness"]["tpr_gap"] < margin["fairness"]["tpr_gap"]
    assert ddl["fairness"]["inst_tpr_std"] < margin["fairness"]["inst_tpr_std"]


def test_the_examples_share_one_recipe():
    """The comparison is fair only if the examples differ in their method alone."""
    examples = {m: json.loads((ROOT / "examples" / f"faces_{m}.json").read_text())
                for m in ("margin", "mixfairface", "multibranch", "ddl")}
    for spec in examples.values():
        spec.pop("method"), spec.pop("output_dir")
    first = examples.pop("margin")
    assert all(spec == first for spec in examples.values())
