"""Label mapping: a model's outputs (its ``labels``) onto the classes of the evaluation data.

A classifier or segmenter from elsewhere rarely predicts exactly the dataset's target. The map
assigns each dataset class (``info.class_names``) one or several model labels:

* **by name** (no ``--label-map``): every class name is looked up among the labels, exactly, then
  case-insensitively. For a **multi-label** model (independent sigmoid outputs, e.g. CelebA
  attributes) and a binary target of which one class is found (CelebA names the classes of
  ``Blond_Hair`` ``("not Blond_Hair", "Blond_Hair")``, of ``Male`` ``("Female", "Male")``), that
  label's column gives ``p = sigmoid(z)`` and the two classes score ``(1 - p, p)``;
* **by a file** (``--label-map FILE``): JSON ``{"dataset class": "model label"}``, where a value may
  be a list of labels whose probabilities are summed (``{"cat": ["tabby", "tiger cat"]}``). Every
  class must be mapped, except that for a multi-label model the other class of a binary target
  is the complement of the mapped one.

Scores after mapping are log-probabilities up to a per-sample (per-pixel) constant: class ``k``
scores ``log sum_{l in L_k} p_l``, with ``p`` the softmax of the logits (a single-label model) or
their sigmoids (a multi-label one). The argmax is the predicted class and a softmax of the scores
gives the probabilities of the classes renormalised over them, so every classification and
segmentation metric applies unchanged. A single-label model whose labels are the classes in the
same order passes its logits through untouched (what its run measured, bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FairError
from .untrusted import quote, read_json

# A map of a few thousand classes (ImageNet's 1000, with lists of labels) is well under 1 MiB.
MAX_LABEL_MAP_BYTES = 8 * 2**20
# Names shown in one error line before "..." (a model may have 21 000 labels).
SHOWN_NAMES = 8


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(quote(n, 40) for n in names[:SHOWN_NAMES])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > SHOWN_NAMES else shown


def read_label_map(path: str | Path) -> dict[str, list[str]]:
    """``--label-map FILE``: a JSON object of dataset class -> model label (or a non-empty list of
    labels), as class -> list of labels; anything else is one line naming the file."""
    raw = read_json(path, MAX_LABEL_MAP_BYTES, "fair_core.label_map.MAX_LABEL_MAP_BYTES", "label map",
                    "a label map nests 2 levels")
    if not isinstance(raw, dict):
        raise FairError(f"--label-map {path}: expected a JSON object of dataset class -> model label (or list of "
                        f"labels), got {quote(raw)}")
    mapping: dict[str, list[str]] = {}
    for name, value in raw.items():
        labels = [value] if isinstance(value, str) else value
        if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
            raise FairError(f"--label-map {path}: the class {quote(name)} maps to {quote(value)}; expected a model label "
                            f"or a non-empty list of model labels")
        mapping[name] = labels
    return mapping


class LabelMap:
    """Maps model scores ``(N, L, ...)`` to class scores ``(N, C, ...)`` (see the module docstring).

    ``columns[k]``: the label indices of class ``k``, or ``None`` for the complement class of a
    binary target of a multi-label model (``complement_of`` is then the other class)."""

    def __init__(self, columns: list[list[int] | None], num_labels: int, multi_label: bool):
        self.columns, self.num_labels, self.multi_label = columns, num_labels, multi_label
        self.identity = not multi_label and columns == [[i] for i in range(num_labels)]
        self.single = all(c is not None and len(c) == 1 for c in columns)
        self._index = torch.tensor([c[0] for c in columns]) if self.single else None

    def describe(self, class_names: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
        """The map as recorded in metrics.json: class -> its labels (``"1 - <label>"`` for a complement)."""
        described: dict[str, Any] = {}
        for name, cols in zip(class_names, self.columns, strict=True):
            if cols is None:
                other = next(c for c in self.columns if c is not None)
                described[name] = f"1 - {' + '.join(labels[i] for i in other)}"
            else:
                described[name] = [labels[i] for i in cols]
        return described

    def __call__(self, scores: Tensor) -> Tensor:
        if scores.shape[1] != self.num_labels:
            raise FairError(f"MODEL: the model gives {scores.shape[1]} scores per sample for its {self.num_labels} labels")
        if self.identity:
            return scores
        scores = scores.float()
        logp = F.logsigmoid(scores) if self.multi_label else scores  # log-probabilities up to a constant
        if self.single and not self.multi_label:
            return logp.index_select(1, self._index.to(scores.device))
        out = []
        for cols in self.columns:
            if cols is None:
                out.append(None)
                continue
            if len(cols) == 1:
                out.append(logp[:, cols[0]])
            else:
                out.append(torch.logsumexp(logp[:, cols], dim=1))
        for k, cols in enumerate(self.columns):  # a complement: log(1 - p) of the other class's p
            if cols is None:
                other = next(c for c in self.columns if c is not None)
                if len(other) == 1:
                    out[k] = F.logsigmoid(-scores[:, other[0]])
                else:
                    out[k] = torch.log1p(-torch.sigmoid(scores[:, other]).sum(1).clamp(max=1.0))
        return torch.stack(out, dim=1)


def _find(label: str, labels: Sequence[str], exact: dict[str, int], folded: dict[str, int]) -> int | None:
    if label in exact:
        return exact[label]
    return folded.get(label.casefold())


def build_label_map(class_names: Sequence[str], labels: Sequence[str], multi_label: bool,
                    mapping: dict[str, str | list[str]] | None = None, map_file: str | Path | None = None,
                    model: str = "MODEL") -> LabelMap:
    """The :class:`LabelMap` of the dataset's ``class_names`` onto the model's ``labels``: by
    ``mapping`` (read from ``map_file``) when given, else by name. A problem is one line naming the
    class and the labels (or the file)."""
    exact: dict[str, int] = {}
    folded: dict[str, int] = {}
    for i, label in enumerate(labels):  # the first of equal names wins
        exact.setdefault(label, i)
        folded.setdefault(label.casefold(), i)
    binary_multi = multi_label and len(class_names) == 2
    where = f"--label-map {map_file}" if map_file is not None else "--label-map"

    if mapping is None:
        columns: list[list[int] | None] = []
        for name in class_names:
            found = _find(name, labels, exact, folded)
            columns.append(None if found is None else [found])
        missing = [name for name, cols in zip(class_names, columns, strict=True) if cols is None]
        if missing and not (binary_multi and len(missing) == 1):
            kind = "multi-label " if multi_label else ""
            raise FairError(f"{model}: the dataset class(es) {_names(missing)} are not among the {kind}model's labels "
                            f"({_names(list(labels))}); pass --label-map FILE, a JSON object mapping each dataset class "
                            f"to a model label or a list of labels")
        return LabelMap(columns, len(labels), multi_label)

    unknown = [name for name in mapping if name not in class_names]
    if unknown:
        raise FairError(f"{where}: {_names(unknown)} is not a class of the evaluation data (classes: "
                        f"{_names(list(class_names))})")
    columns = []
    for name in class_names:
        if name not in mapping:
            columns.append(None)
            continue
        cols = []
        for label in [mapping[name]] if isinstance(mapping[name], str) else mapping[name]:
            found = _find(label, labels, exact, folded)
            if found is None:
                raise FairError(f"{where}: the class {quote(name, 40)} maps to the label {quote(label, 40)}, which the "
                                f"model lacks (model labels: {_names(list(labels))})")
            cols.append(found)
        columns.append(cols)
    unmapped = [name for name, cols in zip(class_names, columns, strict=True) if cols is None]
    if unmapped and not (binary_multi and len(unmapped) == 1):
        raise FairError(f"{where}: the dataset class(es) {_names(unmapped)} are unmapped; map each to a model label "
                        f"(model labels: {_names(list(labels))})")
    return LabelMap(columns, len(labels), multi_label)
