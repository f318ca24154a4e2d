"""Face verification: train on identities, judge on L2-normalised embeddings.

* Batches are ``{image, identity, group, index}``: the target attribute of the data (the
  dataset's ``identity`` by default) is the identity, the sensitive attribute(s) give the group.
* ``erm`` trains the identity head with cross-entropy (softmax loss); methods add margins.
* Evaluation gathers one L2-normalised embedding per image (``method.embed``; with
  ``eval.params.flip`` the embeddings of the image and its mirror image are summed first, as
  insightface and MixFairFace do), with its identity and group, exactly once per image across
  processes. The metrics (fair-face's protocols, or any plugin's) read the
  :class:`EmbeddingSet`; its ``pairs`` hold the dataset's own pair list when it has one.
* Per sample, ``embeddings.safetensors`` stores the embeddings, split rows, identities and groups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ..checkpoint import write_safetensors
from ..data import DataInfo, FairDataset
from ..hub import FairModel
from ..metrics import Metric
from .base import Evaluation, Task, metric_sections, table_rows

EMBEDDINGS = "embeddings.safetensors"


def group_sizes(identities: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Images and distinct identities of each group, each ``(G,)``."""
    images = torch.bincount(groups, minlength=num_groups)
    identity_group = torch.unique(torch.stack([identities, groups], 1), dim=0)[:, 1]
    return images, torch.bincount(identity_group, minlength=num_groups)


class IdentityDataset(FairDataset):
    """A split seen through its identity attribute: items ``{image, identity, group, index}``."""

    target_key = "identity"

    @property
    def identities(self) -> Tensor:
        return self.targets

    def count_table(self) -> tuple[str, tuple[str, ...], Tensor]:
        """Images and identities of each group (one row per identity would not be readable)."""
        images, identities = group_sizes(self.identities, self.groups, self.info.num_groups)
        return "count", ("images", "identities"), torch.stack([images, identities])


class EmbedderModel(FairModel, pipeline_tag="image-feature-extraction", tags=["fairness", "face-recognition"]):
    """A fair face recogniser: ``embed(images)`` gives L2-normalised embeddings ``(N, D)`` of float
    images ``(N, 3, H, W)`` in [0, 1] (aligned faces); ``flip=True`` sums the embeddings of each
    image and its mirror image first. Cosine similarity of two embeddings scores a pair."""

    def embed(self, images: Tensor, flip: bool | None = None) -> Tensor:
        flip = self.fair_config.get("eval_flip", False) if flip is None else flip
        return self._infer(images, lambda x: embed_images(self.method, self.network, x, flip))


def embed_images(method, model: nn.Module, images: Tensor, flip: bool) -> Tensor:
    """``normalize(embed(x) [+ embed(flip(x))])``."""
    embeddings = method.embed(model, images).float()
    if flip:
        embeddings = embeddings + method.embed(model, images.flip(-1)).float()
    return F.normalize(embeddings, dim=1)


class VerificationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flip: bool = Field(False, description="sum the embeddings of each image and its horizontal flip before normalising")
    fpr: float = Field(1e-3, gt=0, lt=1, description="operating point: false-positive rate over negative pairs at which "
                                                    "metrics report true-positive rates")
    instance_fpr: float = Field(1e-5, gt=0, lt=1, description="operating point of instance-level metrics (fair-face's "
                                "rfw_val_inst, after MixFairFace): false-positive rate over all ordered impostor pairs")
    block_size: int = Field(4096, ge=1, description="rows of the similarity matrix computed at a time by block-wise metrics")


@dataclass
class EmbeddingSet:
    """What verification metrics compute on: one row per evaluated image, ordered by split row.

    ``embeddings`` ``(N, D)`` L2-normalised; ``identities``, ``groups``, ``index`` ``(N,)``;
    ``pairs`` ``(P, 3)`` positions ``(a, b, same)`` into these rows, from the dataset's pair list
    (``None`` when it has none); ``params`` the task's evaluation parameters; ``cache`` lets
    metrics share an expensive intermediate (a threshold, per-image counts) within one evaluation."""

    embeddings: Tensor
    identities: Tensor
    groups: Tensor
    index: Tensor
    group_names: tuple[str, ...]
    params: VerificationParams
    pairs: Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)


class VerificationEvaluation(Evaluation):
    def __init__(self, task: VerificationTask, dataset: IdentityDataset):
        super().__init__(task, dataset)
        self._parts: list[tuple[Tensor, ...]] = []
        self._state: EmbeddingSet | None = None

    def outputs(self, method, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        embeddings = embed_images(method, model, batch["image"], self.task.eval_params.flip)
        return embeddings, batch["identity"], batch["group"], batch["index"]

    def update(self, gathered: tuple[Tensor, ...]) -> None:
        self._parts.append(tuple(t.cpu() for t in gathered))

    def state(self) -> EmbeddingSet:
        if self._state is None:
            embeddings, identities, groups, index = (torch.cat(p) for p in zip(*self._parts, strict=True))
            order = index.argsort()  # the same order whatever the number of processes
            index = index[order]
            pairs = None
            split_pairs = self.dataset.split.pairs
            if split_pairs is not None:
                position = torch.full((int(index.max()) + 1 if index.numel() else 0,), -1, dtype=torch.long)
                position[index] = torch.arange(index.numel())
                rows = torch.as_tensor(split_pairs, dtype=torch.long)
                keep = (rows[:, 0] < position.numel()) & (rows[:, 1] < position.numel())
                rows = rows[keep]
                a, b = position[rows[:, 0]], position[rows[:, 1]]
                found = (a >= 0) & (b >= 0)
                pairs = torch.stack([a[found], b[found], rows[found, 2]], 1)
            self._state = EmbeddingSet(
                embeddings[order], identities[order], groups[order], index, self.dataset.info.group_names,
                self.task.eval_params, pairs)
        return self._state


class VerificationTask(Task):
    """Verify identities from embeddings; fairness across the groups of the identities."""

    name = "verification"
    description = "face verification: identity head in training, L2-normalised embeddings in evaluation"
    EvalParams = VerificationParams
    dataset_class = IdentityDataset
    pipeline_tag = "image-feature-extraction"
    model_noun = "face recognition model"
    model_class = EmbedderModel
    open_set = True

    def loss(self, outputs: Tensor, batch: dict[str, Tensor], info: DataInfo) -> Tensor:
        """Softmax loss: cross-entropy of the identity head's logits on the identities."""
        return F.cross_entropy(outputs, batch["identity"])

    def model_config(self, info: DataInfo) -> dict[str, Any]:
        return {"eval_flip": self.eval_params.flip}

    def evaluation(self, dataset: IdentityDataset) -> VerificationEvaluation:
        return VerificationEvaluation(self, dataset)

    def data_section(self, train_info: DataInfo, eval_info: DataInfo, split: str) -> dict[str, Any]:
        return {"dataset": eval_info.dataset, "split": split, "identity": eval_info.target, "sensitive": list(eval_info.sensitive),
                "training_identities": train_info.num_classes, "groups": list(eval_info.group_names)}

    def summarize(self, evaluation: VerificationEvaluation, metrics: Sequence[Metric], eval_spec: Any,
                  seed: int) -> dict[str, Any]:
        state = evaluation.state()
        sections = metric_sections(state, metrics)
        images, identities = group_sizes(state.identities, state.groups, state.num_groups)
        groups = table_rows("group", state.group_names, {"n": images.tolist(), "identities": identities.tolist()},
                            sections["group_columns"])
        overall = {**sections["overall"], "n": int(state.index.numel()),
                   "identities": int(torch.unique(state.identities).numel())}
        if state.pairs is not None:
            overall["pairs"] = int(state.pairs.shape[0])
        return {"overall": overall, "groups": groups, "fairness": sections["fairness"], "operating_fpr": state.params.fpr}

    def write_outputs(self, directory: Path, evaluation: VerificationEvaluation) -> None:
        state = evaluation.state()
        tensors = {"embeddings": state.embeddings.contiguous(), "index": state.index.contiguous(),
                   "identity": state.identities.contiguous(), "group": state.groups.contiguous()}
        if state.pairs is not None:
            tensors["pairs"] = state.pairs.contiguous()
        info = evaluation.dataset.info
        metadata = {"identity_names": json.dumps(list(evaluation.dataset.split.values[info.target])),
                    "group_names": json.dumps(list(info.group_names)), "flip": json.dumps(state.params.flip)}
        write_safetensors(directory / EMBEDDINGS, tensors, metadata)

    def card_target(self, data: dict[str, Any]) -> str:
        return f" to tell the identities (`{data['target']}`) apart"

    def usage_lines(self, repo_id: str, config: dict[str, Any]) -> list[str]:
        return ["from fair_core import from_pretrained", "", f'model = from_pretrained("{repo_id}")',
                "a, b = model.embed(faces_a), model.embed(faces_b)  # float tensors (N, 3, H, W) in [0, 1]",
                "scores = (a * b).sum(1)  # cosine similarity of each pair"]
