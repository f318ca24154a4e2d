"""Leakage: how well a fresh adversary recovers the protected attribute from what a model outputs.

Post-processing methods that hide the protected attribute from an adversary (FairReprogram on the
output scores, FAAP on the deployed model's features) are judged by an adversary they did not
train against: ``attribute_leakage`` fits a multinomial logistic regression (standardised inputs,
L2 penalty, full-batch L-BFGS) on ``k - 1`` folds of the representations and reports its accuracy on
the held-out fold, averaged over ``k`` stratified folds ("leakage", Wang et al., "Balanced Datasets
Are Not Enough", ICCV 2019). Its floor is the majority group's share (:func:`majority_share`).

With ``labels`` the adversary is fitted within each class and the accuracies are averaged with the
classes' sizes: what the representation reveals of the group *beyond the class*, the leakage that
equalised odds asks to remove (FairReprogram's adversary, for the ``eo`` criterion, also sees the
label). Without, an adversary on the whole set also reads the group off the class wherever the
data ties them (demographic parity's leakage).
"""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_folds(groups: Tensor, folds: int, seed: int) -> Tensor:
    """The fold (0..folds-1) of every sample: each group dealt round-robin over the folds in a
    seeded random order, so every fold holds each group's share."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(groups)
    for g in torch.unique(groups):
        members = torch.nonzero(groups == g).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        fold[members] = torch.arange(members.numel()) % folds
    return fold


def fit_logistic_regression(x: Tensor, y: Tensor, num_classes: int, l2: float = 1e-3, steps: int = 100) -> tuple[Tensor, Tensor]:
    """Weights ``(d, K)`` and bias ``(K,)`` minimising mean cross-entropy + ``l2 * ||W||^2 / 2``."""
    weight = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


@torch.no_grad()
def attribute_leakage(representations: Tensor, groups: Tensor, folds: int = 5, seed: int = 0, l2: float = 1e-3,
                      labels: Tensor | None = None) -> float:
    """Held-out accuracy of a logistic-regression adversary predicting ``groups`` from
    ``representations`` ``(N, d)``, averaged over ``folds`` stratified folds; with ``labels``, of one
    adversary per class, averaged with the classes' sizes (classes with one group: accuracy 1)."""
    if labels is not None:
        total = 0.0
        for label in torch.unique(labels):
            members = labels == label
            if torch.unique(groups[members]).numel() < 2:
                total += members.sum().item()
                continue
            total += members.sum().item() * attribute_leakage(representations[members], groups[members], folds, seed, l2)
        return total / labels.numel()
    x = representations.detach().double().flatten(1)
    groups = groups.long()
    fold = stratified_folds(groups, folds, seed)
    num_groups = int(groups.max()) + 1
    accuracies = []
    for k in range(folds):
        train, test = fold != k, fold == k
        mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
        with torch.enable_grad():
            weight, bias = fit_logistic_regression((x[train] - mean) / std, groups[train], num_groups, l2)
        predicted = (((x[test] - mean) / std) @ weight + bias).argmax(1)
        accuracies.append((predicted == groups[test]).double().mean().item())
    return sum(accuracies) / folds


def majority_share(groups: Tensor, labels: Tensor | None = None) -> float:
    """The accuracy of always guessing the largest group (within each class, with ``labels``):
    the floor of :func:`attribute_leakage`."""
    if labels is not None:
        return sum(torch.bincount(groups[labels == label].long()).max().item() for label in torch.unique(labels)) / groups.numel()
    return torch.bincount(groups.long()).max().item() / groups.numel()


@torch.no_grad()
def model_outputs(model, dataset, batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The class scores (the method's inference rule), the features (``network.features``: a
    post-processing method's features of its modified input), the targets and the groups of every
    sample of ``dataset`` (a :class:`~fair_core.FairDataset`, already preprocessed), for a
    :class:`~fair_core.FairModel` ``model``."""
    from torch.utils.data import DataLoader

    network = model.network.eval()
    scores, features, targets, groups = [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        scores.append(model.method.predict(network, batch["image"]).float())
        features.append(network.features(batch["image"]).float())
        targets.append(batch["target"])
        groups.append(batch["group"])
    return torch.cat(scores), torch.cat(features), torch.cat(targets), torch.cat(groups)


def model_leakage(model, dataset, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """:func:`attribute_leakage` of a model's class scores and of its features on ``dataset``,
    within each class, with its floor (the majority group's share within each class)."""
    scores, features, targets, groups = model_outputs(model, dataset)
    return {"scores": attribute_leakage(scores, groups, folds, seed, labels=targets),
            "features": attribute_leakage(features, groups, folds, seed, labels=targets),
            "majority": majority_share(groups, targets)}
