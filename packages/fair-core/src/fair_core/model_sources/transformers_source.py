"""``hf:`` models: a transformers image classifier or semantic segmenter with its own image processor.

- ``hf:PATH``: a local folder as ``save_pretrained`` writes it (``config.json``,
  ``preprocessor_config.json``, ``model.safetensors`` or its shards);
- ``hf:ORG/NAME[@REVISION]``: the same files in a Hub repo (downloaded unless ``HF_HUB_OFFLINE=1``,
  then the local cache only; only the JSON and safetensors files are fetched).

Nothing runs that the repo ships: a ``config.json`` or ``preprocessor_config.json`` with an
``auto_map`` (code to import, ``trust_remote_code``) is refused before transformers reads it, models
load with ``trust_remote_code=False`` and ``use_safetensors=True``, and a folder or repo with pickled
weights alone is refused. A config whose ``architectures`` name a ``...ForSemanticSegmentation``
model is a segmenter (``AutoModelForSemanticSegmentation``; logits resized back to the input
image, as the processors' ``post_process_semantic_segmentation``), any other an
``AutoModelForImageClassification``. Labels come from ``config.id2label``; ``problem_type:
multi_label_classification`` makes the outputs independent sigmoids. Each batch goes through the
model's image processor with ``do_rescale`` off (the images already are in [0, 1]): its resize, crop
and normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from torch import Tensor, nn

from ..errors import FairError
from ..hub import MAX_NUM_CLASSES
from ..sources import LoadedModel, ModelSource, NoOptions, file_sha256
from .hub_files import (
    check_repo_id,
    commit_of,
    hub_file,
    hub_snapshot,
    read_model_json,
    refuse_pickled,
    sha256_text,
    split_revision,
)

CONFIG, PROCESSOR = "config.json", "preprocessor_config.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
# What is fetched of a Hub repo: configs and safetensors weights, never pickles or code.
HUB_PATTERNS = ["*.json", "*.safetensors"]


def refuse_remote_code(config: Any, path: Path) -> None:
    """One line when a JSON config of the model asks for code shipped with it."""
    if not isinstance(config, dict):
        raise FairError(f"{path}: not a transformers config (a JSON object)")
    if "auto_map" in config:
        raise FairError(f"{path}: auto_map: this model needs its own code (trust_remote_code), which fair never runs; "
                        f"only models built into transformers are loaded")


def _weights(folder: Path, where: str) -> Path:
    for name in (SAFETENSORS, SAFETENSORS_INDEX):
        if (folder / name).is_file():
            return folder / name
    refuse_pickled(folder, where, f"{SAFETENSORS} or {SAFETENSORS_INDEX}")


class TransformersNet(nn.Module):
    """The transformers model behind its image processor: float images in [0, 1] to logits (a
    segmenter's at the input images' size)."""

    def __init__(self, model: nn.Module, processor: Any, segmentation: bool):
        super().__init__()
        self.model = model
        self.processor = processor
        self.segmentation = segmentation
        try:  # transformers' torchvision processors work on tensors where they are; PIL ones through numpy
            from transformers.image_processing_backends import TorchvisionBackend
        except ImportError:
            TorchvisionBackend = ()  # noqa: N806
        self.on_device = isinstance(processor, TorchvisionBackend)

    def forward(self, images: Tensor) -> Tensor:
        source = images if self.on_device else images.cpu()
        pixels = self.processor(images=source, do_rescale=False, return_tensors="pt")["pixel_values"]
        weight = next(self.model.parameters(), None)
        pixels = pixels.to(device=images.device, dtype=weight.dtype if weight is not None else images.dtype)
        logits = self.model(pixel_values=pixels).logits
        if self.segmentation and logits.shape[-2:] != images.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits


class TransformersModel(LoadedModel):
    def __init__(self, net: TransformersNet, task: str, labels: tuple[str, ...], multi_label: bool,
                 source: dict[str, Any]):
        self.module = net
        self.task = task
        self.labels = labels
        self.multi_label = multi_label
        self.source = source
        self.input_size = None  # the image processor resizes whatever size the dataset has

    def scores(self, images: Tensor) -> Tensor:
        return self.module(images)


def _labels(config: Any, where: str) -> tuple[str, ...]:
    n = int(config.num_labels)
    if not 0 < n <= MAX_NUM_CLASSES:
        raise FairError(f"{where}: config.json: num_labels {n} (1 to {MAX_NUM_CLASSES})")
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return tuple(id2label.get(i, f"LABEL_{i}") for i in range(n))


class TransformersSource(ModelSource):
    prefix: ClassVar[str] = "hf"
    extra: ClassVar[str] = "fair-core[transformers]"
    description: ClassVar[str] = "a transformers classifier or segmenter, its image processor: hf:ORG/NAME, hf:PATH"
    Options: ClassVar[type[BaseModel]] = NoOptions

    def load(self, ref: str, options: BaseModel) -> LoadedModel:
        import transformers  # noqa: F401  (ImportError before any download: the caller's install hint)

        where = f"hf:{ref}"
        local = Path(ref).expanduser()
        if local.is_dir():
            folder = local
            for name in (CONFIG, PROCESSOR):
                if not (folder / name).is_file():
                    raise FairError(f"{where}: no {name} in {folder} (save_pretrained writes the model's config and "
                                    f"its image processor's)")
                refuse_remote_code(read_model_json(folder / name, name), folder / name)
            weights = _weights(folder, where)
            if weights.name == SAFETENSORS:
                digest = file_sha256(weights)
            else:  # shards: the digest of their names and digests
                shards = sorted(folder.glob("*.safetensors"))
                digest = sha256_text("".join(f"{p.name}:{file_sha256(p)}\n" for p in shards))
            source: dict[str, Any] = {"kind": "hf", "ref": ref, "path": str(folder.resolve()), "sha256": digest}
        else:
            repo, revision = split_revision(ref)
            check_repo_id(repo, where)
            config_path = hub_file(repo, CONFIG, revision, where)
            refuse_remote_code(read_model_json(config_path, CONFIG), config_path)
            commit = commit_of(config_path) or revision
            processor_path = hub_file(repo, PROCESSOR, commit, where, required=False)
            if processor_path is None:
                raise FairError(f"{where}: the Hub repo {repo} has no {PROCESSOR} (the model's image processor)")
            refuse_remote_code(read_model_json(processor_path, PROCESSOR), processor_path)
            folder = hub_snapshot(repo, commit, HUB_PATTERNS, where) if commit else config_path.parent
            _weights(folder, where)
            source = {"kind": "hf", "ref": ref, "repo": repo, "revision": commit}
        return self._load_folder(folder, where, source)

    @staticmethod
    def _load_folder(folder: Path, where: str, source: dict[str, Any]) -> TransformersModel:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, AutoModelForSemanticSegmentation
        from transformers.utils import logging as hf_logging

        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        except Exception as exc:  # an unknown model_type (a newer transformers, or remote code without auto_map)
            raise FairError(f"{where}: transformers {transformers.__version__} cannot read config.json: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        architectures = list(getattr(config, "architectures", None) or [])
        segmentation = any(str(a).endswith("ForSemanticSegmentation") for a in architectures)
        auto = AutoModelForSemanticSegmentation if segmentation else AutoModelForImageClassification
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # fair's own progress bars only
        try:
            model = auto.from_pretrained(folder, config=config, use_safetensors=True, trust_remote_code=False)
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
        except Exception as exc:
            kind = "semantic segmentation" if segmentation else "image classification"
            raise FairError(f"{where}: not a transformers {kind} model it can load "
                            f"(architectures {architectures or 'none'}): {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        model.eval()
        multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        task = "segmentation" if segmentation else "classification"
        if segmentation and multi_label:
            raise FairError(f"{where}: config.json: problem_type multi_label_classification on a segmenter")
        labels = _labels(config, where)
        source = {**source, "architecture": architectures[0] if architectures else type(model).__name__,
                  "transformers": transformers.__version__}
        return TransformersModel(TransformersNet(model, processor, segmentation), task, labels, multi_label, source)

