"""FDR (last-layer refit): its constraints against hand-computed values, the balanced set, the fit,
and a run whose encoder stays the base's and whose saved model predicts as the run did."""

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_spec
from fair_core import FairModel
from fair_core.errors import FairError
from fair_core.plugins import get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec
from fair_methods.cells import cell_index
from fair_methods.fdr import (
    FDRParams,
    balanced_subset,
    class_weights,
    equalized_odds_gap,
    fit_head,
    loss_gap,
    refit_objective,
    worst_cell_loss,
)

LN2 = math.log(2)


# --------------------------------------------------------------------------- the constraints
def test_eo_uses_rates_conditional_on_the_groups_negatives_and_positives():
    p = torch.tensor([0.2, 0.4, 0.7, 0.9, 0.6, 0.5, 0.8, 0.3])  # P(y = 1)
    y = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1])
    a = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # FPR_0 = (0.2 + 0.4) / 2 = 0.3, FPR_1 = 0.6 / 1 = 0.6; FNR_0 = (0.3 + 0.1) / 2 = 0.2,
    # FNR_1 = (0.5 + 0.2 + 0.7) / 3 = 1.4 / 3: EO = 0.3 + (1.4 / 3 - 0.2) = 17 / 30
    # (the study's joint rates, divided by the group's 4 samples: |0.15 - 0.15| + |0.1 - 0.35| = 0.25)
    assert equalized_odds_gap(torch.stack([1 - p, p], 1), y, a, 2).item() == pytest.approx(17 / 30, abs=1e-6)


def test_eo_of_three_classes_is_the_mean_of_each_class_one_vs_rest():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7],    # group 0, y = 0, 1, 2
                          [0.4, 0.4, 0.2], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])   # group 1, y = 0, 0, 2
    y = torch.tensor([0, 1, 2, 0, 0, 2])
    a = torch.tensor([0, 0, 0, 1, 1, 1])
    # class 0: FPR 0.15 (0.2, 0.1) vs 0.3; FNR 0.4 vs 0.55 (0.6, 0.5)          -> 0.15 + 0.15 = 0.3
    # class 1: FPR 0.25 (0.3, 0.2) vs 0.8 / 3 (0.4, 0.1, 0.3); FNR 0.5 vs none -> 1 / 60 + 0 (group 1 left out)
    # class 2: FPR 0.2 (0.1, 0.3) vs 0.3 (0.2, 0.4); FNR 0.3 vs 0.6            -> 0.1 + 0.3 = 0.4
    # mean: (18 + 1 + 24) / 60 / 3 = 43 / 180
    assert equalized_odds_gap(probs, y, a, 2).item() == pytest.approx(43 / 180, abs=1e-6)


def test_ae_and_mmf_of_three_classes():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7],
                          [0.4, 0.4, 0.2], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])
    y = torch.tensor([0, 1, 2, 0, 0, 2])
    a = torch.tensor([0, 0, 0, 1, 1, 1])
    nll = -probs.log().gather(1, y[:, None])[:, 0]
    # L_0 = -ln(0.6 * 0.5 * 0.7) / 3 = ln(1 / 0.21) / 3, L_1 = -ln(0.4 * 0.5 * 0.4) / 3 = ln(1 / 0.08) / 3
    assert loss_gap(nll, a, 2).item() == pytest.approx(math.log(0.21 / 0.08) / 3, abs=1e-6)
    # cells: (0,0) -ln 0.6, (1,0) ln 2, (2,0) -ln 0.7, (0,1) ln(1 / 0.2) / 2 = 0.80, (2,1) -ln 0.4 = ln 2.5 (the worst)
    assert worst_cell_loss(nll, y, a, 3, 2).item() == pytest.approx(math.log(2.5), abs=1e-6)


def test_ae_of_three_groups_is_max_minus_min_and_ignores_an_empty_group():
    losses = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    # L = 1.5, 1.75, 0.8; group 3 has no sample
    assert loss_gap(losses, groups, 4).item() == pytest.approx(1.75 - 0.8, abs=1e-6)


# probabilities [P(y=0), P(y=1)] whose NLLs are multiples of ln 2
BINARY_PROBS = torch.tensor([[1 / 2, 1 / 2], [3 / 4, 1 / 4], [15 / 16, 1 / 16], [1 / 2, 1 / 2], [1 / 2, 1 / 2]])
BINARY_Y = torch.tensor([0, 1, 1, 1, 0])  # NLL: 1, 2, 4, 1, 1 (x ln 2)
BINARY_A = torch.tensor([0, 0, 1, 1, 1])
# classes: 2 of class 0, 3 of class 1 -> weights 3/2, 1; NLL_w = (1.5 (1 + 1) + (2 + 4 + 1)) / (1.5 * 2 + 3) = 5/3 ln 2
# eo: FPR 0.5 vs 0.5; FNR 0.75 vs (15/16 + 1/2) / 2 = 23/32 -> 1/32
# ae: L_0 = (1 + 2) / 2 = 1.5, L_1 = (4 + 1 + 1) / 3 = 2 (x ln 2) -> 0.5 ln 2
# mmf: cells (0,0) 1, (1,0) 2, (1,1) (4 + 1) / 2 = 2.5, (0,1) 1 (x ln 2) -> 2.5 ln 2, the whole objective
@pytest.mark.parametrize(("constraint", "value", "objective"), [
    ("eo", 1 / 32, 5 / 3 * LN2 + 2 / 32),
    ("ae", 0.5 * LN2, 5 / 3 * LN2 + 2 * 0.5 * LN2),
    ("mmf", 2.5 * LN2, 2.5 * LN2),
])
def test_refit_objective_of_two_classes(constraint, value, objective):
    weights = class_weights(BINARY_Y, 2)
    assert weights.tolist() == [1.5, 1.0]
    loss, nll, penalty = refit_objective(BINARY_PROBS.log(), BINARY_Y, BINARY_A, weights, constraint, 2.0, 2)
    assert nll.item() == pytest.approx(5 / 3 * LN2, abs=1e-6)
    assert penalty.item() == pytest.approx(value, abs=1e-6)
    assert loss.item() == pytest.approx(objective, abs=1e-6)


# --------------------------------------------------------------------------- the balanced set and the fit
def test_balanced_subset_gives_every_nonempty_cell_the_smallest_size_without_replacement():
    y = torch.tensor([0] * 9 + [0] * 3 + [1] * 5)  # cells (0,0): 9, (0,1): 3, (1,0): 5, (1,1): empty
    a = torch.tensor([0] * 9 + [1] * 3 + [0] * 5)
    chosen = balanced_subset(y, a, 2, torch.Generator().manual_seed(0))
    assert torch.bincount(cell_index(y[chosen], a[chosen], 2), minlength=4).tolist() == [3, 3, 3, 0]
    assert len(set(chosen.tolist())) == 9
    assert class_weights(y[chosen], 2).tolist() == [1.0, 2.0]  # 6 of class 0, 3 of class 1


@pytest.fixture
def one_thread():
    """Tiny full-batch fits: a second intra-op thread only waits for a core on a busy machine (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_features(seed=0, n=25):
    """Balanced cells of 2-d features: the first carries the class in both groups, the second
    carries it strongly in group 1 only (so a plain fit serves group 1 better)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 0, 1, 1]).repeat_interleave(n)
    a = torch.tensor([0, 1, 0, 1]).repeat_interleave(n)
    sign = (2 * y - 1).float()
    features = torch.stack([0.5 * sign + torch.randn(4 * n, generator=generator),
                            1.5 * a * sign + 0.5 * torch.randn(4 * n, generator=generator)], 1)
    return features, y, a


def fitted_terms(constraint, alpha):
    features, y, a = toy_features()
    head, final = fit_head(features, y, a, 2, 2, FDRParams(constraint=constraint, alpha=alpha, epochs=500, lr=0.1),
                           torch.Generator().manual_seed(0))
    with torch.no_grad():
        log_probs = head(features).log_softmax(1)
    nll = -log_probs.gather(1, y[:, None])[:, 0]
    return head, final, {"eo": equalized_odds_gap(log_probs.exp(), y, a, 2).item(), "ae": loss_gap(nll, a, 2).item(),
                         "mmf": worst_cell_loss(nll, y, a, 2, 2).item()}


def test_each_constraint_lowers_its_own_term_against_a_plain_fit(one_thread):
    """Seed 0: eo 0.65 -> 0.05, ae 0.54 -> 0.08, worst cell loss 0.62 -> 0.56 (seeds 1 and 2 of
    the toy data: eo / 5.5 and / 4.7, ae / 7.5 and / 10.8, worst cell -0.11 and -0.06)."""
    _, _, plain = fitted_terms("eo", 0.0)
    for constraint in ("eo", "ae"):
        _, final, terms = fitted_terms(constraint, 2.0)
        assert terms[constraint] < 0.3 * plain[constraint]
        assert final[constraint] == pytest.approx(terms[constraint], abs=1e-5)
    assert fitted_terms("mmf", 2.0)[2]["mmf"] < plain["mmf"] - 0.03


def test_the_fit_is_deterministic(one_thread):
    first, second = fitted_terms("ae", 2.0)[0], fitted_terms("ae", 2.0)[0]
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)


# --------------------------------------------------------------------------- a run
DATA = {"params": {"train_size": 400, "val_size": 80, "test_size": 120, "image_size": 16}}
FDR_PARAMS = {"epochs": 100, "lr": 0.01, "extra_splits": ["val"]}


@pytest.fixture(scope="module")
def fdr_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fdr") / "run"
    result = run(parse_spec(small_spec(out, data=DATA, method={"name": "fdr", "params": FDR_PARAMS})))
    return out, result


def test_the_encoder_stays_the_bases_and_the_head_is_refitted(fdr_run):
    out, _ = fdr_run
    base, refitted = load_file(out / "base" / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == refitted.keys()
    encoder = [k for k in base if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder)  # BatchNorm statistics are compared too
    assert all(torch.equal(refitted[k], base[k]) for k in encoder)
    assert not torch.equal(refitted["head.weight"], base["head.weight"])


def test_the_head_is_the_fit_on_the_balanced_train_and_val_features(fdr_run, one_thread):
    """A reference: the base's features of the whole train and val splits (un-augmented), the
    balanced subset from train.seed, the same fit."""
    out, _ = fdr_run
    base = FairModel.from_pretrained(out / "base")
    builder_cls = get_registry().get("datasets", "synthetic").obj
    builder = builder_cls(builder_cls.Params.model_validate(DATA["params"]), "synthetic")
    splits = [builder.load(s, None, None) for s in ("train", "val")]
    images = torch.cat([torch.stack([d[i]["image"] for i in range(len(d))]) for d in splits])
    y, a = torch.cat([d.targets for d in splits]), torch.cat([d.groups for d in splits])
    generator = torch.Generator().manual_seed(0)
    chosen = balanced_subset(y, a, 2, generator)
    with torch.no_grad():
        features = base.network.eval().features(images)[chosen]
    head, _ = fit_head(features, y[chosen], a[chosen], 2, 2, FDRParams(**FDR_PARAMS), generator)
    weights = load_file(out / "model.safetensors")
    torch.testing.assert_close(weights["head.weight"], head.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights["head.bias"], head.bias.detach(), rtol=1e-4, atol=1e-5)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["fdr/samples"] for r in logged if "fdr/samples" in r] == [chosen.numel()]


def test_the_saved_model_predicts_as_the_run(fdr_run):
    out, result = fdr_run
    model = FairModel.from_pretrained(out)
    assert result["spec"]["method"]["name"] == "fdr" and model.fair_config["method"]["name"] == "fdr"
    builder_cls = get_registry().get("datasets", "synthetic").obj
    test = builder_cls(builder_cls.Params.model_validate(DATA["params"]), "synthetic").load("test", None, None)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    order = torch.tensor([int(r["index"]) for r in rows])
    with torch.no_grad():
        probs = model.predict_proba(test.split.images[order])
    scores = torch.tensor([[float(r[f"score_{c}"]) for c in model.class_names] for r in rows])
    torch.testing.assert_close(scores, probs, atol=2e-6, rtol=0)
    assert probs.argmax(1).tolist() == [int(r["prediction"]) for r in rows]


@pytest.mark.parametrize(("splits", "message"), [
    (["nope"], "method.params.extra_splits: unknown split 'nope' for synthetic; available: train, val, test"),
    (["train"], "method.params.extra_splits: 'train' is data.train_split"),
    (["test"], "method.params.extra_splits: 'test' is eval.split"),
])
def test_extra_splits_are_checked_when_the_spec_is_resolved(tmp_path, splits, message):
    params = {**FDR_PARAMS, "extra_splits": splits}  # no base: stage 1 would train first
    with pytest.raises(FairError, match="^" + message):
        run(parse_spec(small_spec(tmp_path / "bad", data=DATA, method={"name": "fdr", "params": params})))
    assert not (tmp_path / "bad").exists()  # refused before the folder, the data or stage 1


def test_a_split_listed_twice_is_refused_by_the_params():
    with pytest.raises(ValueError, match="more than once"):
        FDRParams(extra_splits=["val", "val"])
