"""MixFairFace: the identity bias, the CIFP margin and the logits against plain loops, detach,
one training step, DDP's use of every parameter, and a short run reloaded with from_pretrained."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from conftest import small_spec
from fair_core import DataInfo, FairError, Preprocessing
from fair_core.hub import from_pretrained
from fair_core.plugins import get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec, validate_params
from fair_core.tasks import VerificationTask
from fair_face.mixfairface import (
    MixFairFace,
    MixFairFaceNetwork,
    MixFairFaceParams,
    cifp_margin,
    identity_bias,
    step_permutation,
)
from fair_face.models import SmallEmbeddingCNN, SmallEmbeddingCNNParams

NUM_CLASSES, IMAGE_SIZE, EMBEDDING = 6, 16, 8


def make_method(**params):
    info = DataInfo(dataset="test", target="identity", sensitive=("group",),
                    class_names=tuple(f"id{i}" for i in range(NUM_CLASSES)), group_names=("A", "B"),
                    preprocessing=Preprocessing(IMAGE_SIZE))
    method = MixFairFace(MixFairFaceParams(**params), info, VerificationTask())
    torch.manual_seed(0)
    backbone = SmallEmbeddingCNN(SmallEmbeddingCNNParams(width=4, embedding_dim=EMBEDDING)).build(NUM_CLASSES)
    return method, method.build_model(backbone)


def make_batch(n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            "identity": torch.arange(n) % NUM_CLASSES, "group": torch.arange(n) % 2, "index": torch.arange(n)}


# --------------------------------------------------------------------------- the formulas
def test_identity_bias_of_hand_made_unit_vectors():
    e1, e2, e3 = torch.eye(3)
    f_a = torch.stack([e1, e2, e3])
    permutation = torch.tensor([1, 2, 0])  # f_b = (e2, e3, e1)
    f_mix = torch.stack([
        math.cos(math.pi / 6) * e1 + math.sin(math.pi / 6) * e2,  # leans to its own f_a: 0.25 - 0.75
        e3,  # is its f_b: 1 - 0
        e3,  # is its own f_a: 0 - 1
    ])
    torch.testing.assert_close(identity_bias(f_a, f_mix, permutation), torch.tensor([-0.5, 1.0, -1.0]))
    halfway = F.normalize(torch.stack([e1 + e2, e2 + e3, e3 + e1]), dim=1)  # equally close to f_a and f_b
    torch.testing.assert_close(identity_bias(f_a, halfway, permutation), torch.zeros(3))


def cifp_loop(cosines, labels, targets):
    """The CIFP rule written out: the B largest negatives of the batch, kept below the row's
    margined target (``cos_y - m`` for CosFace)."""
    batch, classes = cosines.shape
    negatives = [(cosines[i, j].item(), i, j) for i in range(batch) for j in range(classes) if j != labels[i]]
    hardest = sorted(negatives, reverse=True)[:batch]
    margins = []
    for i in range(batch):
        kept = [v for v, row, _ in hardest if row == i and float(targets[i]) > v]
        margins.append(sum(v * v for v in kept) / len(kept) if kept else 0.0)
    return torch.tensor(margins)


def test_cifp_margin_of_hand_made_cosines():
    cosines = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.6, 0.3]])
    labels = torch.tensor([0, 2])
    # negatives 0.5, 0.1 | 0.2, 0.6; the 2 hardest: 0.6 (row 1), 0.5 (row 0)
    # row 0: 0.9 - 0.35 > 0.5 kept -> 0.25; row 1: 0.3 - 0.35 < 0.6 dropped -> 0
    target = cosines.gather(1, labels.view(-1, 1)).squeeze(1) - 0.35
    torch.testing.assert_close(cifp_margin(cosines, labels, target), torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(cifp_loop(cosines, labels, [0.9 - 0.35, 0.3 - 0.35]), torch.tensor([0.25, 0.0]))


@pytest.mark.parametrize("seed", range(4))
def test_cifp_margin_equals_the_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    batch, classes, m = 9, 7, 0.2
    cosines = torch.rand(batch, classes, generator=generator) * 2 - 1
    labels = torch.randint(classes, (batch,), generator=generator)
    cosines[torch.arange(batch), labels] = 0.7 + 0.3 * torch.rand(batch, generator=generator)  # some rows keep, some not
    target = cosines.gather(1, labels.view(-1, 1)).squeeze(1) - m
    expected = cifp_loop(cosines, labels, target.tolist())
    assert (expected > 0).any() and (expected == 0).any()
    torch.testing.assert_close(cifp_margin(cosines, labels, target), expected)


def trained_like(model, images):
    """Eval mode with the batch's own BatchNorm statistics and class weights equal to the first
    images' embeddings: cosines spread over [-1, 1], so eps and the CIFP margin are far from 0."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # running statistics = those of the one batch seen
    with torch.no_grad():
        model(images)
        model.eval()
        model.head.weight.copy_(model.features(images)[:NUM_CLASSES])


@pytest.mark.parametrize("head", ["cosface", "arcface"])
def test_logits_are_the_margin_head_with_extra_margin_eps_plus_cifp(head):
    method, model = make_method(head=head, m=0.35, s=64.0)
    batch = make_batch()
    trained_like(model, batch["image"])  # eval mode: the same forward twice (no dropout)
    permutation = torch.tensor([3, 0, 1, 2, 7, 6, 5, 4])
    terms = method.mixfair_terms(model, batch, permutation)
    with torch.no_grad():
        cosines, f_a, f_mix = model(batch["image"], mix_permutation=permutation)
    labels = batch["identity"]
    eps = torch.tensor([(f_mix[i] @ f_a[permutation[i]]) ** 2 - (f_mix[i] @ f_a[i]) ** 2 for i in range(8)])
    at_label = [min(1.0, cosines[i, labels[i]].item()) for i in range(8)]  # the head clamps to [-1, 1]
    if head == "cosface":
        targets = [c - 0.35 for c in at_label]
    else:
        assert all(c > math.cos(math.pi - 0.35) for c in at_label)
        targets = [math.cos(math.acos(c) + 0.35) for c in at_label]
    cifp = cifp_loop(cosines, labels, targets)
    assert (eps.abs() > 0.1).sum() >= 4 and (cifp > 0.1).sum() >= 2 and (cifp == 0).any()
    torch.testing.assert_close(terms.eps.detach(), eps)
    torch.testing.assert_close(terms.cifp.detach(), cifp)
    extra = 0.35 + eps + cifp
    expected = 64.0 * cosines.clone()
    for i, c in enumerate(at_label):
        if head == "cosface":
            expected[i, labels[i]] = 64.0 * (c - extra[i])
        else:
            assert c > math.cos(math.pi - extra[i])  # the plain cos(theta + m) branch
            expected[i, labels[i]] = 64.0 * math.cos(math.acos(c) + extra[i])
    torch.testing.assert_close(terms.logits.detach(), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms.loss.detach(), F.cross_entropy(expected, labels), atol=1e-4, rtol=1e-5)


def test_cifp_off_gives_a_zero_margin():
    method, model = make_method(cifp=False)
    terms = method.mixfair_terms(model, make_batch(), torch.arange(8).flip(0))
    assert torch.equal(terms.cifp, torch.zeros(8))


@pytest.mark.parametrize("detach", [False, True])
def test_detach_decides_whether_the_loss_reaches_the_mixed_pass(detach):
    """The mixed features reach the loss only through eps: their gradient is zero iff detached."""
    method, model = make_method(detach=detach)
    outputs = []
    handle = model.debias.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    terms = method.mixfair_terms(model, make_batch(), torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]))
    handle.remove()
    assert len(outputs) == 2  # f_a, then the mixed pass, through the debias layer separately
    (grad,) = torch.autograd.grad(terms.loss, [outputs[1]], allow_unused=True)
    if detach:
        assert grad is None
        assert not terms.eps.requires_grad and not terms.cifp.requires_grad
    else:
        assert grad is not None and grad.abs().sum() > 0
        assert terms.eps.requires_grad and terms.cifp.requires_grad


# --------------------------------------------------------------------------- building and training
def test_the_network_drops_the_embedding_head_and_embeds_through_the_debias_layer():
    method, model = make_method()
    assert isinstance(model, MixFairFaceNetwork)
    flat = 4 * 4 * 4 * 4  # small_embedding_cnn(width 4): 16 channels pooled to 4x4
    layers = model.debias
    assert (layers.bn_in.num_features, layers.fc.in_features, layers.fc.out_features, layers.bn_out.num_features) \
        == (flat, flat, EMBEDDING, EMBEDDING)
    assert layers.dropout.p == 0.4
    assert not any(type(m).__name__ == "EmbeddingHead" for m in model.modules())
    model.eval()
    images = make_batch()["image"]
    expected = layers(model.encoder(images))
    torch.testing.assert_close(method.embed(model, images), expected)
    torch.testing.assert_close(model(images), model.head(expected))


def test_bad_head_and_bad_backbone_are_refused():
    with pytest.raises(FairError, match="method.params.head"):
        validate_params(MixFairFaceParams, {"head": "softmax"}, "method.params")
    method, _ = make_method()
    with pytest.raises(FairError, match="mixfairface needs a face backbone"):
        method.build_model(nn.Linear(3, 3))


def test_step_permutation_is_a_function_of_seed_step_and_process():
    a = step_permutation(32, seed=3, step=10)
    assert sorted(a.tolist()) == list(range(32))
    assert torch.equal(a, step_permutation(32, seed=3, step=10))
    assert not torch.equal(a, step_permutation(32, seed=3, step=11))
    assert not torch.equal(a, step_permutation(32, seed=4, step=10))
    assert not torch.equal(a, step_permutation(32, seed=3, step=10, process=1))


def test_one_training_step_updates_the_debias_layer_and_logs_eps_and_cifp():
    method, model = make_method()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trainer = SimpleNamespace(spec=SimpleNamespace(train=SimpleNamespace(seed=0)), global_step=5,
                              accelerator=SimpleNamespace(process_index=0), step=step)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    logs = method.training_step(model, make_batch(), trainer)
    assert set(logs) == {"loss", "eps", "cifp"} and all(torch.isfinite(v) for v in logs.values())
    for name, p in model.named_parameters():  # every parameter took part (what DDP needs)
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name in ("debias.fc.weight", "debias.bn_in.weight", "debias.bn_out.bias", "head.weight"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name


def test_ddp_without_unused_parameter_search_accepts_two_mixfair_steps(tmp_path):
    """DDP (one gloo process) with find_unused_parameters=False raises on the next step when a
    parameter got no gradient; a parameter added to the model and never used shows the check works."""
    import torch.distributed as dist

    assert MixFairFace.ddp_find_unused_parameters is False
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        def two_steps(model):
            ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
            for seed in range(2):
                cosines, f_a, f_mix = ddp(make_batch(seed=seed)["image"], mix_permutation=torch.arange(8).flip(0))
                (cosines.sum() + f_a.sum() + f_mix.sum()).backward()

        method, model = make_method()
        two_steps(model)
        _, broken = make_method()
        broken.unused = nn.Linear(2, 2)
        with pytest.raises(RuntimeError, match="(?i)reduction|unused"):
            two_steps(broken)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- a run
def test_a_short_run_writes_metrics_and_its_model_reloads_with_the_same_embeddings(tmp_path):
    out = tmp_path / "out"
    spec = small_spec(
        out, task="verification",
        data={"name": "synthetic_faces", "params": {"train_identities": 24, "eval_identities": 4, "eval_images": 3,
                                                    "image_size": 16}},
        model={"name": "small_embedding_cnn", "params": {"width": 4, "embedding_dim": 16}},
        method={"name": "mixfairface", "params": {"m": 0.2}},
        train={"epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "seed": 0, "log_every": 1},
        eval={"batch_size": 8, "bootstrap": 0, "params": {"fpr": 0.05, "flip": True}},
    )
    result = run(parse_spec(spec))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "verification" and metrics["spec"]["method"]["name"] == "mixfairface"
    assert {"tpr_gap", "worst_group_tpr"} <= set(metrics["fairness"]) and result["overall"]["n"] == 24
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "train/eps" in r]
    assert steps and all({"train/loss", "train/cifp"} <= set(r) for r in steps)

    config = json.loads((out / "config.json").read_text())
    assert config["method"]["params"]["m"] == 0.2 and config["method"]["params"]["cifp"] is True
    model = from_pretrained(out)
    data = config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    test = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"]).load(
        "test", None, data["sensitive"], task=VerificationTask())
    images = torch.stack([test.split.images[i] for i in range(24)])
    stored = load_file(out / "embeddings.safetensors")
    torch.testing.assert_close(model.embed(images), stored["embeddings"], atol=1e-5, rtol=0)
    assert isinstance(model.network, MixFairFaceNetwork)
