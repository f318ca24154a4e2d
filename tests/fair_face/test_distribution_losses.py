"""The similarity-distribution methods (``multibranch``, the FairFace challenge solution, and
``ddl``): the soft histogram and its losses against plain loops and hand computations, the
online mining on hand-made similarity matrices, branch validation, the P x K epoch order, one
training step and a short run of each method."""

import json
import math

import pytest
import torch

from conftest import small_spec
from fair_core import DataInfo, FairError, Preprocessing, SplitData
from fair_core.runner import run
from fair_core.spec import parse_spec
from fair_core.tasks import VerificationTask
from fair_core.tasks.verification import IdentityDataset
from fair_face import distribution as D
from fair_face.ddl import DDLParams, DistributionDistillation, ddl_losses
from fair_face.models import SmallEmbeddingCNN, SmallEmbeddingCNNParams
from fair_face.multibranch import MultiBranch, MultiBranchParams, identity_batch_order, multibranch_losses

IMAGE_SIZE = 16


# --------------------------------------------------------------------------- plain references
def loop_histogram(values, step, sigma):
    """The soft histogram written as two loops over bins and values."""
    bins = [i * step for i in range(round(1 / step))]
    mass = [sum(math.exp(-0.5 * ((s - b) / sigma) ** 2) for s in values) for b in bins]
    total = sum(mass)
    return [m / total for m in mass]


def loop_entropy(p):
    return -sum(x * math.log(x + 1e-9) for x in p)


def loop_kl(p, q):
    return sum((a + 1e-9) * (math.log(a + 1e-9) - math.log(b + 1e-9)) for a, b in zip(p, q, strict=True))


def mean(values):
    return sum(values) / len(values)


# --------------------------------------------------------------------------- histogram and losses
@pytest.mark.parametrize("step", [0.01, 0.001])
def test_soft_histogram_sums_to_one_and_equals_a_loop(step):
    values = [0.93, 0.12, -0.3, 0.5, 0.505, 0.0]
    p = D.soft_histogram(torch.tensor(values), D.histogram_bins(step), 0.1)
    assert p.shape == (round(1 / step),)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(p, torch.tensor(loop_histogram(values, step, 0.1)), rtol=1e-4, atol=1e-7)
    bins = D.histogram_bins(0.01)
    assert bins[0] == 0 and bins[-1].item() == pytest.approx(0.99) and bins.numel() == 100


def test_gradients_flow_through_the_soft_histogram():
    values = torch.tensor([0.2, 0.7], requires_grad=True)
    p = D.soft_histogram(values, D.histogram_bins(0.01), 0.1)
    D.entropy(p).backward()
    assert values.grad is not None and torch.all(values.grad.abs() > 0)


def test_entropy_kl_and_order_on_hand_made_distributions():
    # two equal bins: H = log 2; one bin: H = 0
    assert D.entropy(torch.tensor([0.5, 0.5, 0.0])).item() == pytest.approx(math.log(2), abs=1e-6)
    assert D.entropy(torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)
    # KL([1/2, 1/2, 0] || [1/4, 1/4, 1/2]) = 2 * 1/2 * log 2 = log 2 (the empty bin adds ~1e-9 log(1e-9 / 0.5))
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
    assert D.kl_divergence(p, q).item() == pytest.approx(math.log(2), abs=1e-6)
    assert D.kl_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
    assert D.kl_divergence(q, p).item() == pytest.approx(loop_kl(q.tolist(), p.tolist()), rel=1e-5)
    # order: mean([0.2, 0.4]) - mean([0.5, 0.9]) = 0.3 - 0.7
    assert D.order_loss(torch.tensor([0.2, 0.4]), torch.tensor([0.5, 0.9])).item() == pytest.approx(-0.4)


# --------------------------------------------------------------------------- mining
# 5 images: identities 0 0 1 2 2; rows 3 and 4 are two copies of one dataset row (index 7)
SIMILARITY = torch.tensor([
    [1.00, 0.80, 0.30, 0.55, 0.10],
    [0.80, 1.00, 0.65, 0.20, 0.40],
    [0.30, 0.65, 1.00, 0.05, 0.70],
    [0.55, 0.20, 0.05, 1.00, 0.99],
    [0.10, 0.40, 0.70, 0.99, 1.00],
])
IDENTITIES = torch.tensor([0, 0, 1, 2, 2])
INDEX = torch.tensor([1, 2, 5, 7, 7])


def test_top_negatives_are_unique_pairs_of_different_identities():
    # negative pairs i < j: (0,2) .30 (0,3) .55 (0,4) .10 (1,2) .65 (1,3) .20 (1,4) .40 (2,3) .05 (2,4) .70
    torch.testing.assert_close(D.top_negatives(SIMILARITY, IDENTITIES, 3), torch.tensor([0.70, 0.65, 0.55]))
    everything = D.top_negatives(SIMILARITY, IDENTITIES, 100)  # fewer pairs than k: all 8, no masked entry
    torch.testing.assert_close(everything, torch.tensor([0.70, 0.65, 0.55, 0.40, 0.30, 0.20, 0.10, 0.05]))


def test_ddl_hardest_negative_per_row_masks_one_identity_and_drops_rows_without_a_candidate():
    # row 0: max(.30, .55, .10); row 1: max(.65, .20, .40); row 2: max(.05, .70); row 3: only (3,4), same
    # identity; row 4: nothing after it (TFace's triu would give 0.99 for row 3 and a spurious 0 for row 4)
    torch.testing.assert_close(D.hardest_negatives(SIMILARITY, IDENTITIES), torch.tensor([0.55, 0.65, 0.70]))


def test_positives_are_pairs_of_one_identity_but_not_two_copies_of_one_image():
    torch.testing.assert_close(D.positive_similarities(SIMILARITY, IDENTITIES, INDEX), torch.tensor([0.80]))
    torch.testing.assert_close(D.positive_similarities(SIMILARITY, IDENTITIES), torch.tensor([0.80, 0.99]))


def test_positive_thresholds_keep_hard_positives_or_all_and_ddl_s_is_honoured():
    values = torch.tensor([0.3, 0.7, 0.55, 0.9])
    torch.testing.assert_close(D.keep_below(values, 0.6), torch.tensor([0.3, 0.55]))
    torch.testing.assert_close(D.keep_below(values, 0.1), values)  # none qualifies: all of them
    torch.testing.assert_close(D.keep_above(values, 0.6), torch.tensor([0.7, 0.9]))
    assert D.keep_above(values, 0.95).numel() == 0


# --------------------------------------------------------------------------- methods on hand-made batches
GROUPS = ("A", "B", "C")


def info(num_classes=6, groups=GROUPS):
    return DataInfo(dataset="test", target="identity", sensitive=("group",),
                    class_names=tuple(f"id{i}" for i in range(num_classes)), group_names=groups,
                    preprocessing=Preprocessing(IMAGE_SIZE))


def identity_dataset(identities, groups, group_names=GROUPS):
    identities, groups = torch.as_tensor(identities), torch.as_tensor(groups)
    n, num_classes = identities.numel(), int(identities.max()) + 1
    split = SplitData(images=torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)),
                      attributes={"identity": identities, "group": groups},
                      values={"identity": tuple(f"id{i}" for i in range(num_classes)), "group": group_names})
    data_info = IdentityDataset.describe(split, "test", "identity", ("group",), Preprocessing(IMAGE_SIZE))
    return IdentityDataset(split, data_info)


def make_method(cls, params_cls, train_identities, train_groups, **params):
    """A method prepared on a training set of those identities and groups, with its model."""
    train = identity_dataset(train_identities, train_groups)
    method = cls(params_cls(**params), train.info, VerificationTask())
    training = method.prepare_data(train, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = method.build_model(SmallEmbeddingCNN(SmallEmbeddingCNNParams(width=4, embedding_dim=8)).build(train.info.num_classes))
    return method, model, training


def unit(degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def cos(a, b):
    return math.cos(math.radians(a - b))


# identities 0, 1 in group A (branch 0); 2, 3 in group B and 4, 5 in group C (branch 1 = B + C)
TRAIN_IDENTITIES = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
TRAIN_GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
ANGLES = [0, 40, 100, 110, 0, 80, 30, 60, 65, 65]  # rows 8 and 9: one image (index 9)
BATCH = {"identity": torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4, 4]),
         "group": torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2]),
         "index": torch.tensor([0, 1, 2, 3, 4, 5, 6, 8, 9, 9])}


def test_multibranch_losses_equal_a_hand_computation_with_each_branch_s_own_entropy():
    method, _, _ = make_method(MultiBranch, MultiBranchParams, TRAIN_IDENTITIES, TRAIN_GROUPS,
                               branches=[["A"], ["B", "C"]], top_k=2, pos_max_similarity=0.9)
    embeddings = unit(ANGLES)
    scores = torch.zeros(10, 6)  # the classification term is checked on its own below
    parts = multibranch_losses(scores, embeddings, BATCH, method)

    # branch 0 (rows 0-3, angles 0 40 100 110): positives (0,1) cos 40 = .766, (2,3) cos 10 = .985 -> below .9: .766
    # negatives, the 2 largest of cos 100, cos 110, cos 60, cos 70: cos 60, cos 70
    neg0, pos0 = [cos(40, 100), cos(40, 110)], [cos(0, 40)]
    # branch 1 (rows 4-9, angles 0 80 30 60 65 65; identities 2 2 3 4 4 4, rows 8 and 9 one image):
    # positives (4,5) cos 80, (7,8) cos 5, (7,9) cos 5 ((8,9): one image) -> below .9: cos 80; negatives:
    # the 2 largest of the unique pairs of different identities: (5,8) cos 15 and (5,9) cos 15
    neg1, pos1 = [cos(80, 65), cos(80, 65)], [cos(0, 80)]
    p = {name: loop_histogram(values, 0.01, 0.1) for name, values in
         {"n0": neg0, "p0": pos0, "n1": neg1, "p1": pos1}.items()}
    entropy = sum(loop_entropy(p[name]) for name in ("n0", "p0", "n1", "p1"))
    kl = loop_kl(p["n0"], p["n1"]) + loop_kl(p["p0"], p["p1"])
    order = (mean(neg0) - mean(pos0)) + (mean(neg1) - mean(pos1))
    assert parts["entropy"].item() == pytest.approx(0.01 * entropy, rel=1e-4)
    assert parts["kl"].item() == pytest.approx(0.1 * kl, rel=1e-4)
    assert parts["order"].item() == pytest.approx(0.1 * order, rel=1e-4)
    weight = method.head.weight.detach()
    assert parts["classifier_l2"].item() == pytest.approx(0.001 * weight.square().sum().item() / 2, rel=1e-5)


def test_each_branch_classifier_is_a_softmax_over_its_own_identities():
    method, _, _ = make_method(MultiBranch, MultiBranchParams, TRAIN_IDENTITIES, TRAIN_GROUPS,
                               branches=[["A"], ["B", "C"]], head="cosface", s=2.0, m=0.5)
    torch.testing.assert_close(method.branch_identities, torch.tensor([[0, 1, -1, -1, -1, -1], [-1, -1, 0, 1, 2, 3]]))
    scores = torch.linspace(-0.9, 0.9, 60).view(10, 6)
    parts = multibranch_losses(scores, unit(ANGLES), BATCH, method)
    expected = 0.0
    for rows, columns in (([0, 1, 2, 3], [0, 1]), ([4, 5, 6, 7, 8, 9], [2, 3, 4, 5])):
        losses = []
        for r in rows:
            label = columns.index(int(BATCH["identity"][r]))
            logits = [2.0 * (float(scores[r, c]) - (0.5 if j == label else 0.0)) for j, c in enumerate(columns)]
            losses.append(math.log(sum(math.exp(x) for x in logits)) - logits[label])
        expected += mean(losses)
    assert parts["classification"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("detach", [False, True])
def test_ddl_losses_equal_a_hand_computation_with_the_positive_threshold_honoured(detach):
    method, _, _ = make_method(DistributionDistillation, DDLParams, TRAIN_IDENTITIES, TRAIN_GROUPS,
                               branches=[["A"], ["B", "C"]], pos_threshold=0.5, detach_teacher=detach)
    embeddings = unit(ANGLES).requires_grad_(True)
    parts = ddl_losses(torch.zeros(10, 6), embeddings, BATCH, method)
    # branch 0: hardest negatives per row: row 0 max(cos 100, cos 110), row 1 max(cos 60, cos 70), rows 2-3 none
    # positives cos 40 (.766) and cos 10 (.985), both above .5
    neg0, pos0 = [cos(0, 100), cos(40, 100)], [cos(0, 40), cos(100, 110)]
    # branch 1: row 4 max(cos 30, cos 60, cos 65, cos 65), row 5 max(cos 50, cos 20, cos 15, cos 15),
    # row 6 max(cos 30, cos 35, cos 35); positives cos 80 (.17, below .5: left out), cos 5, cos 5 (rows 8, 9: one image)
    neg1, pos1 = [cos(0, 30), cos(80, 65), cos(30, 60)], [cos(60, 65), cos(60, 65)]
    h = {name: loop_histogram(values, 0.001, 0.1) for name, values in
         {"n0": neg0, "p0": pos0, "n1": neg1, "p1": pos1}.items()}
    assert parts["kl_positive"].item() == pytest.approx(0.1 * loop_kl(h["p0"], h["p1"]), rel=1e-4)
    assert parts["kl_negative"].item() == pytest.approx(0.02 * loop_kl(h["n0"], h["n1"]), rel=1e-4)
    order = sum(mean(n) - mean(q) for n in (neg0, neg1) for q in (pos0, pos1))
    assert parts["order"].item() == pytest.approx(0.5 * order, rel=1e-4)
    # the teacher (branch 0, rows 0-3) gets a KL gradient unless detached
    (parts["kl_positive"] + parts["kl_negative"]).backward()
    teacher_gradient = embeddings.grad[:4].abs().sum().item()
    assert (teacher_gradient == 0) == detach
    assert embeddings.grad[4:].abs().sum().item() > 0


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("branches, needles", [
    ([["A"], ["B", "X"]], ["method.params.branches", "unknown group \"X\"", "A, B, C"]),
    ([["A", "B"], ["B", "C"]], ["method.params.branches", "\"B\"", "branch 0 and branch 1"]),
    ([["A", "B", "A"], ["C"]], ["method.params.branches", "\"A\" is twice in branch 0"]),
    ([["A"], ["B"]], ["method.params.branches", "C in no branch", "A, B, C"]),
])
def test_branches_are_validated_with_one_line_naming_the_field(branches, needles):
    for cls, params_cls in ((MultiBranch, MultiBranchParams), (DistributionDistillation, DDLParams)):
        with pytest.raises(FairError) as error:
            cls(params_cls(branches=branches), info(), VerificationTask())
        message = str(error.value)
        assert "\n" not in message and all(n in message for n in needles), message


def test_kl_pairs_teacher_and_empty_branches_are_validated():
    with pytest.raises(FairError, match=r"method.params.kl_pairs: \(0, 3\).*0 to 2: A, B, C"):
        MultiBranch(MultiBranchParams(kl_pairs=[(0, 1), (0, 3)]), info(), VerificationTask())
    with pytest.raises(FairError, match=r"method.params.kl_pairs: \(1, 1\)"):
        MultiBranch(MultiBranchParams(kl_pairs=[(1, 1)]), info(), VerificationTask())
    with pytest.raises(FairError, match="method.params.teacher: 2 .* 0 to 1: A, B\\+C"):
        DistributionDistillation(DDLParams(teacher=2, branches=[["A"], ["B", "C"]]), info(), VerificationTask())
    assert MultiBranch(MultiBranchParams(), info(), VerificationTask()).kl_pairs == [(0, 1), (0, 2), (1, 2)]
    train = identity_dataset([0, 0, 1, 1], [0, 0, 1, 1])  # group C has no training image
    method = MultiBranch(MultiBranchParams(), train.info, VerificationTask())
    with pytest.raises(FairError, match="method.params.branches: branch\\(es\\) C have no training images"):
        method.prepare_data(train, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- the epoch order
def order_of(identities, groups, k, balance, seed=0, branches=3):
    return identity_batch_order(torch.as_tensor(identities), torch.as_tensor(groups), k, branches, balance,
                                torch.Generator().manual_seed(seed))


def test_the_epoch_order_gives_runs_of_k_images_of_one_identity_and_balanced_batches():
    # 6 identities of group 0 with 7 images, 3 of group 1 with 2 images, 2 of group 2 with 1 image
    counts = [(0, 7)] * 6 + [(1, 2)] * 3 + [(2, 1)] * 2
    identities = torch.cat([torch.full((c,), i) for i, (_, c) in enumerate(counts)])
    groups = torch.cat([torch.full((c,), g) for g, c in counts])
    k, per_batch = 3, 6  # batches of 6 identities x 3 images: 2 identities of each branch
    order = order_of(identities, groups, k, balance=True)
    assert order.numel() == identities.numel() and order.min() >= 0 and order.max() < identities.numel()
    runs = order[: order.numel() // k * k].view(-1, k)
    assert torch.all(identities[runs] == identities[runs][:, :1])  # each run: K images of one identity
    batches = runs[: runs.shape[0] // per_batch * per_batch].view(-1, per_batch, k)
    for batch in batches:
        assert torch.bincount(groups[batch[:, 0]], minlength=3).tolist() == [2, 2, 2]
        for identity in identities[batch].unique():  # K images of each identity (or a multiple: drawn twice)
            assert (identities[batch] == identity).sum() % k == 0
    assert torch.equal(order, order_of(identities, groups, k, balance=True))  # the seed decides
    assert not torch.equal(order, order_of(identities, groups, k, balance=True, seed=1))
    unbalanced = order_of(identities, groups, k, balance=False)
    runs = unbalanced[: unbalanced.numel() // k * k].view(-1, k)
    assert torch.all(identities[runs] == identities[runs][:, :1])
    assert len(set(unbalanced.tolist())) > len(set(order.tolist()))  # balance repeats the small branches


def test_prepare_data_orders_the_training_set_in_runs_of_k():
    method, _, training = make_method(MultiBranch, MultiBranchParams, TRAIN_IDENTITIES, TRAIN_GROUPS, images_per_identity=2)
    order = training.epoch_order(torch.Generator().manual_seed(3))
    identities = training.dataset.targets[order].view(-1, 2)
    assert order.numel() == len(TRAIN_IDENTITIES) and torch.all(identities[:, 0] == identities[:, 1])


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("cls, params_cls", [(MultiBranch, MultiBranchParams), (DistributionDistillation, DDLParams)])
def test_one_step_changes_the_embedding_network_and_the_distribution_terms_reach_it(cls, params_cls):
    identities = [i for i in range(6) for _ in range(4)]
    groups = [0] * 12 + [1] * 8 + [2] * 4
    method, model, training = make_method(cls, params_cls, identities, groups, images_per_identity=2)
    order = training.epoch_order(torch.Generator().manual_seed(0))
    items = [training.dataset[int(i)] for i in order[:12]]
    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in ("image", "identity", "group", "index")}
    model.train()
    parts = method.losses(model, batch)
    distribution_terms = sum(v for k, v in parts.items() if k not in ("classification", "classifier_l2"))
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(distribution_terms, encoder, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in gradients)

    before = [p.detach().clone() for p in encoder]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    sum(method.losses(model, batch).values()).backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused  # DDP without find_unused_parameters needs every parameter in every step
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, encoder, strict=True))


@pytest.mark.parametrize("method", [{"name": "multibranch", "params": {"top_k": 20}},
                                    {"name": "ddl", "params": {"branches": [["A"], ["B"]], "teacher": 0}}])
def test_a_short_run_of_each_method_writes_its_metrics(tmp_path, method):
    out = tmp_path / "run"
    spec = small_spec(out, task="verification", method=method,
                      data={"name": "synthetic_faces", "params": {"train_identities": 16, "eval_identities": 4,
                                                                  "eval_images": 3, "image_size": IMAGE_SIZE}},
                      model={"name": "small_embedding_cnn", "params": {"width": 4, "embedding_dim": 8}},
                      train={"epochs": 1, "batch_size": 16, "lr": 0.01, "seed": 0},
                      eval={"batch_size": 32, "bootstrap": 0, "params": {"fpr": 0.05}})
    result = run(parse_spec(spec))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spec"]["method"]["name"] == method["name"]
    assert {"tpr_gap", "worst_group_tpr"} <= set(metrics["fairness"]) == set(result["fairness"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train/epoch_loss"]) for r in log if "train/epoch_loss" in r)
