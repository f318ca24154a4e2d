"""Fair models on the Hugging Face Hub: save, push, and load back in one line.

:class:`FairModel` is built on ``huggingface_hub.ModelHubMixin``: ``save_pretrained``,
``push_to_hub`` and ``from_pretrained`` come from there; the files are ``model.safetensors``
(weights), ``config.json`` (architecture, method and its params, data spec, class and group
names, preprocessing), ``metrics.json`` and a model card (``README.md``) with the fairness
results. Nothing is pickled and loading executes no code: the architecture is rebuilt from the
registered plugins named in ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from .atomic import atomic_path, write_text
from .data import DataInfo, Preprocessing
from .errors import FairError
from .plugins import get_registry

if TYPE_CHECKING:
    from .runner import ResolvedRun

WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"


def model_config(run: ResolvedRun, info: DataInfo) -> dict[str, Any]:
    """The ``config.json`` of a trained run: what :class:`FairModel` needs to rebuild it."""
    from . import __version__

    spec = run.spec
    return {
        "fair_version": __version__,
        "task": {"name": run.task.name, "package": run.packages["task"]},
        "model": {"name": spec.model.name, "params": spec.model.params, "package": run.packages["model"]},
        "method": {"name": spec.method.name, "params": run.method_params.model_dump(mode="json"),
                   "package": run.packages["method"]},
        "num_classes": info.num_classes,
        "data": {"name": spec.data.name, "params": spec.data.params, "target": info.target,
                 "sensitive": list(info.sensitive), "class_names": list(info.class_names),
                 "group_names": list(info.group_names),
                 "sensitive_values": {k: list(v) for k, v in info.sensitive_values.items()}},
        "preprocessing": {"image_size": info.preprocessing.image_size, "mean": list(info.preprocessing.mean),
                          "std": list(info.preprocessing.std)},
        **run.task.model_config(info),
    }


def write_model_files(directory: Path, network: nn.Module, config: dict[str, Any]) -> None:
    """Write the weights and config of a model atomically (used by runs and by ``save_pretrained``)."""
    with atomic_path(directory / WEIGHTS) as tmp:
        save_model(network, str(tmp), metadata={"format": "pt"})
    write_text(directory / CONFIG, json.dumps(config, indent=2))


def _lookup(kind: str, section: dict[str, Any]):
    """The plugin class a config names, or an error saying which package to install."""
    registry = get_registry()
    name = section.get("name")
    if name in registry.entries[kind]:
        return registry.entries[kind][name].obj
    package = section.get("package")
    if package and package != "unknown":
        raise FairError(f"config.json: the {kind[:-1]} {name!r} comes from the package {package}, "
                        f"which is not installed (pip install {package})")
    return registry.get(kind, name, f"config.json {kind[:-1]}.name").obj


def _task_section(config: dict[str, Any]) -> dict[str, Any]:
    """The config's task (configs written before tasks existed are classifiers)."""
    task = config.get("task") or {"name": "classification", "package": "fair-core"}
    if not isinstance(task, dict) or not isinstance(task.get("name"), str):
        raise FairError("config.json: task must be an object with a name")
    return task


class FairModel(nn.Module, ModelHubMixin, library_name="fair", tags=["fairness"]):
    """A trained model with its fairness method's inference rule and its preprocessing.

    :func:`from_pretrained` returns the model class of the config's task: a classifier
    (``predict``), a face embedder (``embed``) or a segmenter (``segment``); each takes a float
    tensor ``(N, 3, H, W)`` in [0, 1] of any size. ``class_names`` and ``group_names`` name the
    classes (identities of the training set for face models) and the protected groups.
    """

    def __init__(self, config: dict[str, Any], metrics: dict[str, Any] | None = None):
        super().__init__()
        if not isinstance(config, dict) or "model" not in config or "method" not in config:
            raise FairError("config.json: not a fair model config (needs model, method, num_classes, data)")
        self.fair_config, self.metrics = config, metrics
        self.task = _task_section(config)["name"]
        data, prep = config["data"], config["preprocessing"]
        self.preprocessing = Preprocessing(prep["image_size"], tuple(prep["mean"]), tuple(prep["std"]))
        self.info = DataInfo(
            dataset=data["name"], target=data["target"], sensitive=tuple(data["sensitive"]),
            class_names=tuple(data["class_names"]), group_names=tuple(data["group_names"]),
            sensitive_values={k: tuple(v) for k, v in data.get("sensitive_values", {}).items()},
            preprocessing=self.preprocessing, ignore_index=config.get("ignore_index", 255),
        )
        builder_cls, method_cls = _lookup("models", config["model"]), _lookup("methods", config["method"])
        # the saved weights replace any pretrained ones: rebuild without reading (or needing) them
        model_params = {**config["model"]["params"]}
        if "pretrained" in model_params:
            model_params["pretrained"] = False
        builder = builder_cls(builder_cls.Params.model_validate(model_params))
        task = _lookup("tasks", _task_section(config))()
        self.method = method_cls(method_cls.Params.model_validate(config["method"]["params"]), self.info, task)
        self.network = self.method.build_model(builder.build(config["num_classes"]))
        self._hub_mixin_config = config

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def group_names(self) -> tuple[str, ...]:
        return self.info.group_names

    def forward(self, images: Tensor) -> Tensor:
        """The method's output (class scores, per-pixel scores) on already preprocessed images."""
        return self.method.predict(self.network, images)

    def preprocess(self, images: Tensor) -> Tensor:
        """Resize to the training size and normalise images in [0, 1]."""
        size = self.preprocessing.image_size
        if images.shape[-2:] != (size, size):
            images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.preprocessing.normalize(images)

    @torch.no_grad()
    def _infer(self, images: Tensor, run) -> Tensor:
        """``run(preprocessed images)`` in eval mode on the model's device (the mode is restored)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            return run(self.preprocess(images.to(device).float()))
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ ModelHubMixin
    def _save_pretrained(self, save_directory: Path) -> None:
        write_model_files(Path(save_directory), self.network, self.fair_config)
        if self.metrics is not None:
            write_text(Path(save_directory) / METRICS, json.dumps(self.metrics, indent=2))

    def generate_model_card(self, *args, **kwargs):
        from .card import model_card

        return model_card(self.fair_config, self.metrics, repo_id=kwargs.get("repo_id"))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         config: dict[str, Any] | None = None, **kwargs) -> FairModel:
        def fetch(filename: str, required: bool = True) -> Path | None:
            local = Path(model_id)
            if local.is_dir():
                path = local / filename
                if path.is_file():
                    return path
                if required:
                    raise FairError(f"{model_id}: no {filename} in this folder")
                return None
            try:
                return Path(hf_hub_download(model_id, filename, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, local_files_only=local_files_only, token=token))
            except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError) as exc:
                if not required and isinstance(exc, EntryNotFoundError):
                    return None
                raise FairError(f"{model_id}: cannot get {filename}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else 'not found'}") from None

        if config is None:
            config_path = fetch(CONFIG)
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise FairError(f"{config_path}: unreadable config.json: {exc.msg}") from None
        metrics_path = fetch(METRICS, required=False)
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path else None
        model = _model_class(cls, config)(config, metrics)
        weights = fetch(WEIGHTS)
        try:
            missing, unexpected = load_model(model.network, str(weights), strict=False)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise FairError(f"{weights}: corrupt or incompatible weights: {exc}") from None
        if missing or unexpected:
            raise FairError(f"{weights}: weights do not match the architecture in config.json "
                            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        return model.eval()


def _model_class(requested: type[FairModel], config: dict[str, Any]) -> type[FairModel]:
    """The model class of the config's task (its ``model_class``), checked against the class
    ``from_pretrained`` was called on."""
    if not isinstance(config, dict):
        raise FairError("config.json: not a fair model config (needs model, method, num_classes, data)")
    task_name = _task_section(config)["name"]
    model_class = _lookup("tasks", _task_section(config)).model_class
    if not issubclass(model_class, requested):
        raise FairError(f"config.json: a {task_name} model; {requested.__name__}.from_pretrained cannot load it "
                        f"(use fair_core.from_pretrained)")
    return model_class


def from_pretrained(name_or_path: str | Path, **kwargs: Any) -> FairModel:
    """Load a fair model from a Hub repo id (``org/name``) or a local folder, in eval mode: a
    classifier, face embedder or segmenter, as the model's task says.

    With ``HF_HUB_OFFLINE=1`` only the local cache and folders are used."""
    try:
        return FairModel.from_pretrained(str(name_or_path), **kwargs)
    except FairError:
        raise
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise FairError(f"{name_or_path}: cannot load the model: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def load_run(run_dir: str | Path) -> FairModel:
    """A finished run's model with its metrics (what ``fair push`` uploads)."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS).is_file():
        raise FairError(f"{run_dir}: not a finished run (no metrics.json)")
    return from_pretrained(run_dir)


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a finished run (weights, config, metrics, model card) to ``repo_id``; returns the commit URL."""
    model = load_run(run_dir)
    try:
        return str(model.push_to_hub(repo_id, private=private, token=token, model_card_kwargs={"repo_id": repo_id},
                                     commit_message=f"Upload fair model ({model.fair_config['method']['name']})"))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise FairError(f"push to {repo_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def read_image(path: str | Path) -> Tensor:
    """An image file as a float ``(3, H, W)`` tensor in [0, 1] (grayscale and alpha become RGB)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FairError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise FairError(f"{path}: cannot decode the image: {exc}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0
