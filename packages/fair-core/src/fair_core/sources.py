"""Model sources: where ``fair evaluate`` finds a model it did not train.

A MODEL string ``<prefix>:<ref>`` names a registered :class:`ModelSource` (``timm:resnet18``,
``hf:org/name``, ``onnx:model.onnx``); a string without a registered prefix is a finished run
folder or one of this project's Hub ids (``org/name[@revision]``), loaded by the built-in
:class:`FairSource` (prefix ``fair``) through :func:`fair_core.from_pretrained`, with the model's
own preprocessing and its method's inference rule.

A source returns a :class:`LoadedModel`: the model ready to evaluate on float images
``(N, 3, H, W)`` in ``[0, 1]`` at :attr:`LoadedModel.input_size` (or the dataset's size), WITHOUT
the dataset's mean/std. Each source applies its own library's preprocessing (timm:
``resolve_data_config``; transformers: the model's image processor; onnx: options with
insightface's defaults). Sources register through the ``fair_register_model_sources`` hook::

    @hookimpl
    def fair_register_model_sources(register):
        register("timm", TimmSource)
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

if TYPE_CHECKING:
    from .hub import FairModel


class NoOptions(BaseModel):
    """A source without options."""

    model_config = ConfigDict(extra="forbid")


class LoadedModel(ABC):
    """A model from somewhere else, ready to evaluate on float images (N, 3, H, W) in [0, 1]."""

    task: str  # "classification" | "verification" | "segmentation"
    labels: tuple[str, ...] | None  # names of the model's outputs (classifier / segmenter), None for embedders
    multi_label: bool = False  # True: independent sigmoid outputs (e.g. CelebA attributes)
    source: dict[str, Any]  # recorded in metrics.json / run.json: {"kind": "timm", "ref": ..., "revision" or "sha256": ...}
    module: nn.Module | None = None  # torch module (moved to the device by the runner), None for non-torch (onnx)
    input_size: int | None = None  # the square side the dataset should deliver (the source's preprocessing may resize)

    def scores(self, images: Tensor) -> Tensor:
        """Classification: (N, L) logits over ``labels`` (probabilities are taken by the label
        mapper); segmentation: (N, K, h, w) logits."""
        raise NotImplementedError(f"{type(self).__name__} gives no class scores")

    def embed(self, images: Tensor) -> Tensor:
        """Verification: (N, D) embeddings (the task L2-normalises them)."""
        raise NotImplementedError(f"{type(self).__name__} gives no embeddings")


class ModelSource(ABC):
    """Loads ``<prefix>:<ref>`` models; registered with ``register(prefix, SourceClass)``."""

    prefix: ClassVar[str]  # "timm", "hf", "onnx" (MODEL strings are "<prefix>:<ref>")
    extra: ClassVar[str]  # the pip extra with its library, for the install hint: "fair-core[timm]"
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions  # source options (pydantic, extra="forbid")

    @abstractmethod
    def load(self, ref: str, options: BaseModel) -> LoadedModel:
        """The model ``ref`` names (a missing library: raise ImportError / ModuleNotFoundError,
        the caller turns it into one line with :attr:`extra`)."""


# --------------------------------------------------------------------------- the built-in source
def file_sha256(path: str | Path, chunk: int = 2**22) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class FairLoadedModel(LoadedModel):
    """A model of this project (:func:`fair_core.from_pretrained`) with its own preprocessing:
    resized to its training size (segmenters take any size, as in their run) and normalised with
    the mean/std of its ``config.json``, then the method's inference rule (``predict`` /
    ``embed``): exactly what its run evaluated."""

    def __init__(self, model: FairModel, source: dict[str, Any], open_set: bool):
        self.model, self.source, self.module = model, source, model
        self.task = model.task
        self.labels = None if open_set else tuple(model.class_names)
        self.multi_label = False
        self.train_info = model.info  # the data it was trained on (a face model's training identities)
        self.input_size = None if model.task == "segmentation" else model.preprocessing.image_size

    def _prepare(self, images: Tensor) -> Tensor:
        size = self.input_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                               align_corners=False)
        return self.model.preprocessing.normalize(images)

    def scores(self, images: Tensor) -> Tensor:
        return self.model.method.predict(self.model.network, self._prepare(images))

    def embed(self, images: Tensor) -> Tensor:
        return self.model.method.embed(self.model.network, self._prepare(images))


class FairSource(ModelSource):
    """A finished run folder or one of this project's Hub ids (``org/name[@revision]``); MODEL
    strings without a prefix come here (``fair:`` may be written)."""

    prefix = "fair"
    extra = "fair-core"
    description = ("a finished run folder or a fair model on the Hub, org/name[@revision] (the default: MODEL "
                   "without a prefix)")

    def load(self, ref: str, options: BaseModel) -> LoadedModel:
        from .errors import FairError
        from .hub import CONFIG, METRICS, WEIGHTS, from_pretrained
        from .plugins import get_registry
        from .run_folder import run_state

        folder = Path(ref)
        source: dict[str, Any] = {"kind": "fair", "ref": ref}
        if folder.is_dir():
            state = run_state(folder)
            if state not in (None, "finished"):
                raise FairError(f"MODEL: the run in {ref} is {state}, not finished; evaluate it once it has finished")
            if not os.path.lexists(folder / CONFIG) and os.path.lexists(folder / METRICS):
                raise FairError(f"MODEL: {ref} holds an evaluation (no model files); evaluate the model it evaluated "
                                f"(its metrics.json names it under evaluation.model)")
            model = from_pretrained(folder)
            source["path"] = str(folder.resolve())
            weights = folder / WEIGHTS
        else:
            from huggingface_hub import hf_hub_download

            repo, _, revision = ref.partition("@")
            try:
                model = from_pretrained(repo, revision=revision or None)
            except FairError as exc:
                raise FairError(f"MODEL: {ref} is no folder here; as a Hub id: {exc}") from None
            # the file just loaded, from the local cache: .../snapshots/<commit>/model.safetensors
            weights = Path(hf_hub_download(repo, WEIGHTS, revision=revision or None))
            source["revision"] = weights.parent.name
        source["sha256"] = file_sha256(weights)
        task = get_registry().get("tasks", model.task, "config.json task.name").obj
        return FairLoadedModel(model, source, task.open_set)
