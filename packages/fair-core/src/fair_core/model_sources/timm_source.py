"""``timm:`` models: a timm image model with timm's own preprocessing.

- ``timm:PATH``: a local folder as ``timm.models.save_for_hf`` writes it (``config.json`` with the
  architecture, ``model_args`` and ``pretrained_cfg``, and ``model.safetensors``);
- ``timm:hf-hub:ORG/NAME[@REVISION]``: the same files in a Hub repo (downloaded unless
  ``HF_HUB_OFFLINE=1``, then the local cache only);
- ``timm:NAME`` (``resnet50.a1_in1k``; no tag: timm's default one): the weights timm's registry names,
  from the local Hugging Face cache only (nothing is downloaded for a bare name; a missing entry
  says how to download it).

Only safetensors weights are loaded: a folder or repo with pickled weights alone is refused. The
model sees each batch through timm's eval transform on tensors: ``resolve_data_config`` (by default
with the weights' test-time size and crop, as timm's ``validate.py``), ``create_transform`` (resize
with the weights' interpolation and crop_pct, centre crop, mean/std). Its labels are the weights'
``label_names``, else ImageNet's synsets when timm recognises an ImageNet head
(``timm.data.ImageNetInfo``), else ``class_0``, ``class_1``, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ..errors import FairError
from ..sources import LoadedModel, ModelSource, file_sha256
from ..untrusted import quote
from .hub_files import check_repo_id, commit_of, hub_file, read_model_json, refuse_pickled, split_revision

WEIGHTS = "model.safetensors"
HUB_PREFIX = "hf-hub:"
# timm's safetensors names of its pickled weight files (timm.models._hub._get_safe_alternatives)
SAFE_ALTERNATIVES = {"pytorch_model.bin": WEIGHTS, "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


def weights_overlay(weights: Path) -> dict[str, Any]:
    """What overrides a pretrained_cfg's weight location: the safetensors file found here, nothing
    else (a ``state_dict`` comes first in timm's order, a ``source`` sends it to a folder or the Hub)."""
    return {"file": str(weights), "source": None, "state_dict": None}


class TimmOptions(BaseModel):
    """Options of ``timm:`` models."""

    model_config = ConfigDict(extra="forbid")

    # timm's validate.py evaluates at the weights' test-time input size and crop when they define one
    # (`resolve_data_config(use_test_size=True)`); false: their training size.
    use_test_size: bool = True
    # null: classification when the model has a classifier head, else verification (its pooled
    # features as embeddings); verification on a classifier embeds with its pre-logits features.
    task: Literal["classification", "verification"] | None = None


class TimmPreprocess(nn.Module):
    """timm's eval transform (``create_transform(**data_config, is_training=False)``) applied to a
    batch of float images in [0, 1]. A ``border`` crop pads with the mean colour: done after the
    normalisation, as a pad with 0, which is the same."""

    def __init__(self, data_config: dict[str, Any]):
        super().__init__()
        from timm.data import create_transform
        from timm.data.transforms import CenterCropOrPad, MaybeToTensor
        from torchvision import transforms

        composed = create_transform(**data_config, is_training=False)
        ops = [op for op in composed.transforms if not isinstance(op, (MaybeToTensor, transforms.ToTensor))]
        pads = [op for op in ops if isinstance(op, CenterCropOrPad)]
        ops = [op for op in ops if not isinstance(op, CenterCropOrPad)]
        ops += [CenterCropOrPad(op.size, fill=0, padding_mode=op.padding_mode) for op in pads]
        self.ops = ops
        self.data_config = data_config

    def forward(self, images: Tensor) -> Tensor:
        for op in self.ops:
            images = op(images)
        return images


class TimmNet(nn.Module):
    """The timm model behind its preprocessing: float images in [0, 1] to logits or embeddings."""

    def __init__(self, model: nn.Module, preprocess: TimmPreprocess, embed: bool):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.embed = embed

    def forward(self, images: Tensor) -> Tensor:
        x = self.preprocess(images)
        if self.embed and getattr(self.model, "num_classes", 0):
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self.model(x)


class TimmModel(LoadedModel):
    def __init__(self, net: TimmNet, task: str, labels: tuple[str, ...] | None, source: dict[str, Any]):
        self.module = net
        self.task = task
        self.labels = labels
        self.multi_label = False
        self.source = source
        self.input_size = None  # timm's transform resizes whatever size the dataset has

    def scores(self, images: Tensor) -> Tensor:
        if self.task != "classification":
            raise NotImplementedError("a timm embedder gives no class scores")
        return self.module(images)

    def embed(self, images: Tensor) -> Tensor:
        if self.task != "verification":
            raise NotImplementedError("a timm classifier gives embeddings only with the option task: verification")
        return self.module(images)


def _labels(model: nn.Module) -> tuple[str, ...]:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    n = int(model.num_classes)
    names = model.pretrained_cfg.get("label_names")
    if isinstance(names, dict):  # {index: name}, possibly with gaps
        by_index = {int(k): str(v) for k, v in names.items() if str(k).lstrip("-").isdigit()}
        return tuple(by_index.get(i, f"class_{i}") for i in range(n))
    if isinstance(names, (list, tuple)) and len(names) == n:
        return tuple(str(v) for v in names)
    subset = infer_imagenet_subset(model)
    if subset is not None:
        synsets = ImageNetInfo(subset).label_names()
        if len(synsets) == n:
            return tuple(synsets)
    return tuple(f"class_{i}" for i in range(n))


class TimmSource(ModelSource):
    prefix: ClassVar[str] = "timm"
    extra: ClassVar[str] = "fair-core[timm]"
    description: ClassVar[str] = "a timm model, timm's preprocessing: timm:NAME, timm:hf-hub:ORG/NAME, timm:PATH"
    Options: ClassVar[type[BaseModel]] = TimmOptions

    def load(self, ref: str, options: BaseModel) -> LoadedModel:
        import timm  # noqa: F401  (ImportError: the caller's install hint)

        assert isinstance(options, TimmOptions)
        where = f"timm:{ref}"
        if ref.startswith(HUB_PREFIX):
            repo, revision = split_revision(ref[len(HUB_PREFIX):])
            check_repo_id(repo, where)
            config = hub_file(repo, "config.json", revision, where)
            commit = commit_of(config)
            weights = hub_file(repo, WEIGHTS, commit or revision, where, required=False)
            if weights is None:
                raise FairError(f"{where}: the Hub repo {repo} has no {WEIGHTS} (only safetensors weights are loaded: "
                                f"pickled .bin/.pth weights would run as code)")
            model = self._from_folder(config.parent, weights, where)
            source = {"kind": "timm", "ref": ref, "repo": repo, "revision": commit or revision}
        elif Path(ref).expanduser().is_dir() or "/" in ref or "\\" in ref:
            folder = Path(ref).expanduser()
            if not folder.is_dir():
                raise FairError(f"{where}: no folder {folder} (a Hub repo is timm:hf-hub:ORG/NAME)")
            weights = folder / WEIGHTS
            if not weights.is_file():
                refuse_pickled(folder, where, WEIGHTS)
            model = self._from_folder(folder, weights, where)
            source = {"kind": "timm", "ref": ref, "path": str(folder.resolve()), "sha256": file_sha256(weights)}
        else:
            model, repo, commit = self._from_registry(ref, where)
            source = {"kind": "timm", "ref": ref, "repo": repo, "revision": commit}
        return self._loaded(model, options, source)

    @staticmethod
    def _from_folder(folder: Path, weights: Path, where: str) -> nn.Module:
        """timm's ``local-dir:`` loader on ``folder``, its weights read from ``weights`` (safetensors)."""
        import timm

        config = read_model_json(folder / "config.json", "config.json")
        if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
            raise FairError(f"{folder / 'config.json'}: not a timm model config (no architecture; timm writes it with "
                            f"timm.models.save_for_hf)")
        pretrained = config.get("pretrained_cfg", config)
        if isinstance(pretrained, dict) and pretrained.get("custom_load"):
            raise FairError(f"{where}: pretrained_cfg.custom_load: weights in a model-specific format are not loaded "
                            f"(only timm's own safetensors state dicts)")
        try:
            return timm.create_model(f"local-dir:{folder}", pretrained=True,
                                     pretrained_cfg_overlay=weights_overlay(weights))
        except FairError:
            raise
        except Exception as exc:  # an unknown architecture, mismatched weights, a bad config field
            raise FairError(f"{where}: timm cannot build the model: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _from_registry(name: str, where: str) -> tuple[nn.Module, str, str | None]:
        """timm's registry model ``name``, its weights from the local Hugging Face cache only."""
        import timm
        from timm.models import is_model, resolve_pretrained_cfg, split_model_name_tag

        arch, tag = split_model_name_tag(name)
        if not is_model(arch):
            close = timm.list_models(f"*{arch[:12]}*")[:5]
            raise FairError(f"{where}: unknown timm model {quote(arch)}"
                            f"{'; similar: ' + ', '.join(close) if close else ''} (timm.list_models() lists them)")
        try:
            cfg = resolve_pretrained_cfg(arch, pretrained_cfg=tag or None).to_dict()
        except Exception:  # an unknown tag
            cfg = {}
        hub_id = cfg.get("hf_hub_id")
        if not hub_id:
            raise FairError(f"{where}: timm has no Hub weights for {quote(name)} "
                            f"(timm.list_pretrained('{arch}*') lists the tags that have)")
        if cfg.get("custom_load"):
            raise FairError(f"{where}: its weights are in a model-specific format, not timm's safetensors; not loaded")
        repo, revision = split_revision(hub_id)
        filename = cfg.get("hf_hub_filename") or WEIGHTS
        if not filename.endswith(".safetensors"):  # timm's own safe alternatives of pickled names
            filename = SAFE_ALTERNATIVES.get(filename, filename.rsplit(".", 1)[0] + ".safetensors")
        weights = hub_file(repo, filename, revision, where, local_only=True,
                           why_local=f" (a bare timm name is never downloaded: timm:hf-hub:{repo} is)")
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=weights_overlay(weights))
        except Exception as exc:
            raise FairError(f"{where}: timm cannot build the model: {type(exc).__name__}: {exc}") from None
        return model, repo, commit_of(weights) or revision

    @staticmethod
    def _loaded(model: nn.Module, options: TimmOptions, source: dict[str, Any]) -> TimmModel:
        from timm.data import resolve_data_config

        model.eval()
        has_head = bool(getattr(model, "num_classes", 0))
        task = options.task or ("classification" if has_head else "verification")
        if task == "classification" and not has_head:
            raise FairError(f"timm:{source['ref']}: task classification: the model has no classifier head (num_classes 0)")
        data_config = resolve_data_config(model=model, use_test_size=options.use_test_size)
        preprocess = TimmPreprocess(data_config)
        labels = _labels(model) if task == "classification" else None
        source = {**source, "architecture": model.pretrained_cfg.get("architecture"),
                  "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}}
        return TimmModel(TimmNet(model, preprocess, embed=task == "verification"), task, labels, source)
