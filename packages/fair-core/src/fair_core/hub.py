"""Fair models on the Hugging Face Hub: save, push, and load back in one line.

:class:`FairModel` is built on ``huggingface_hub.ModelHubMixin``: ``save_pretrained``,
``push_to_hub`` and ``from_pretrained`` come from there; the files are ``model.safetensors``
(weights), ``config.json`` (architecture, method and its params, data spec, class and group
names, preprocessing), ``metrics.json`` and a model card (``README.md``) with the fairness
results. Nothing is pickled and loading executes no code: the architecture is rebuilt from the
registered plugins named in ``config.json``.

``config.json`` (and ``metrics.json``, and the weights' header) are untrusted: they are read within
the bounds below and validated (:class:`ModelConfigFile`) before any model is built, the
architecture is then built on the meta device and compared with the weights' header, so nothing
is allocated for a config the weights cannot back. Every problem is one :class:`FairError` line
naming the file and the field.
"""

from __future__ import annotations

import contextvars
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from huggingface_hub import ModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from .atomic import atomic_path, write_text
from .checkpoint import check_safetensors_header, safetensors_write_error
from .data import DataInfo, Preprocessing
from .errors import FairError
from .plugins import KNOWN_PACKAGES, KNOWN_PROVIDERS, SINGULAR, get_registry, normalise_package
from .spec import MAX_LIST_ITEMS, MAX_NAME_CHARS, validate_params, validation_message
from .untrusted import check_nesting, quote, read_json, regular_file

if TYPE_CHECKING:
    from .runner import ResolvedRun

WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"

# --------------------------------------------------------------------------- bounds
# fair writes config.json indented: 100 000 class names of up to 60 characters fit in 8 MiB;
# parsing the worst 8 MiB of JSON (millions of empty lists) stays under 1 GB.
MAX_CONFIG_BYTES = 8 * 2**20
# Sections nest 2 levels, plugin params a few more; 32 keeps the recursive consumers (pydantic,
# json.dumps of the config when pushing) far from Python's recursion limit.
MAX_CONFIG_DEPTH = 32
# List items and object entries in all: 100 000 class names and 10 000 groups fit; it caps each
# walk over the config (validation, the Hub mixin's JSON check) at a fraction of a second.
MAX_CONFIG_ITEMS = 300_000
# Square training size: CelebA-HQ's 1024 and Cityscapes' 2048 fit with room; one preprocessed
# 4096 px image is 192 MiB as float (12000 px took 11 GB in `fair predict`).
MAX_IMAGE_SIZE = 4096
# Classes of a classifier or segmenter, identities of a face model (MS1M: 85 742); the head and
# class_names scale with it (3e7 took 4.4 GB before failing).
MAX_NUM_CLASSES = 100_000
# Protected groups (intersections of the sensitive attributes); per-group tables scale with it.
MAX_GROUPS = 10_000
# A class or group name (intersectional group names join several values).
MAX_LABEL_CHARS = 1000
# The images `fair predict` decodes: 4096 x 4096 (the largest image_size) is 192 MiB as a float tensor;
# PIL's own bomb check starts at 89 Mpx, ~1 GB as float.
MAX_PREDICT_PIXELS = 4096 * 4096

# (config, its validation) while from_pretrained builds the model, so __init__ does not validate again
_VALIDATED: contextvars.ContextVar[tuple[dict, ModelConfigFile] | None] = contextvars.ContextVar("validated", default=None)

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Label = Annotated[str, Field(max_length=MAX_LABEL_CHARS)]
Labels = Annotated[list[Label], Field(max_length=MAX_GROUPS)]


class _ConfigSection(BaseModel):
    # strict: fair writes these types exactly, so anything else was not written by fair (and the
    # raw dict, which tasks read further, then holds exactly the validated types). Unknown entries
    # are tolerated: tasks add their own (task.model_config), newer versions add more, and core
    # never reads an entry it does not validate here.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class TaskRef(_ConfigSection):
    name: Name
    package: Label | None = None


class PluginRef(_ConfigSection):
    name: Name
    params: dict[str, Any] = Field(default_factory=dict)
    package: Label | None = None


class DataConfig(_ConfigSection):
    name: Name
    params: dict[str, Any] = Field(default_factory=dict)
    target: Label
    sensitive: list[Label] = Field(max_length=MAX_LIST_ITEMS)
    class_names: list[Label] = Field(min_length=1, max_length=MAX_NUM_CLASSES)
    group_names: list[Label] = Field(min_length=1, max_length=MAX_GROUPS)
    sensitive_values: dict[Label, Labels] = Field(default_factory=dict, max_length=MAX_LIST_ITEMS)


class PreprocessingConfig(_ConfigSection):
    image_size: int = Field(ge=1, le=MAX_IMAGE_SIZE)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=3, max_length=3)


class InferenceConfig(_ConfigSection):
    mode: Literal["whole", "slide"]
    crop_size: int | None = Field(None, ge=1, le=MAX_IMAGE_SIZE)
    stride: int | None = Field(None, ge=1, le=MAX_IMAGE_SIZE)

    @model_validator(mode="after")
    def _window(self) -> InferenceConfig:
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ValueError("slide inference needs crop_size and stride")
        if self.mode == "slide" and self.stride > self.crop_size:
            raise ValueError(f"stride ({self.stride}) larger than crop_size ({self.crop_size})")
        return self


class ModelConfigFile(_ConfigSection):
    """What ``config.json`` must hold (the entries core reads), with their types and ranges."""

    fair_version: Label | None = None
    task: TaskRef | None = None
    model: PluginRef
    method: PluginRef
    num_classes: int = Field(ge=1, le=MAX_NUM_CLASSES)
    data: DataConfig
    preprocessing: PreprocessingConfig
    ignore_index: int = Field(255, ge=-(2**31), le=2**31 - 1)
    eval_flip: bool = False
    inference: InferenceConfig | None = None

    @property
    def task_ref(self) -> TaskRef:
        """The config's task (configs written before tasks existed are classifiers)."""
        return self.task or TaskRef(name="classification", package="fair-core")


def validate_config(config: Any, source: str = CONFIG) -> ModelConfigFile:
    """``config`` checked as a model's ``config.json`` (``source`` names it in the error line)."""
    if not isinstance(config, dict):
        raise FairError(f"{source}: not a fair model config (an object with model, method, num_classes, data, "
                        f"preprocessing; got {quote(config)})")
    check_nesting(config, MAX_CONFIG_DEPTH, "fair_core.hub.MAX_CONFIG_DEPTH", source,
                  MAX_CONFIG_ITEMS, "fair_core.hub.MAX_CONFIG_ITEMS")
    try:
        parsed = ModelConfigFile.model_validate(config)
    except ValidationError as exc:
        raise FairError(f"{source}: {validation_message(exc)}") from None
    if len(parsed.data.class_names) != parsed.num_classes:
        raise FairError(f"{source}: data.class_names: {len(parsed.data.class_names)} names for num_classes "
                        f"{parsed.num_classes} (one name per class)")
    return parsed


def read_config(path: str | Path) -> Any:
    """The parsed ``config.json`` at ``path``, a regular file of at most :data:`MAX_CONFIG_BYTES`
    (checked by :func:`validate_config` next)."""
    return read_json(path, MAX_CONFIG_BYTES, "fair_core.hub.MAX_CONFIG_BYTES", CONFIG,
                     f"limit {MAX_CONFIG_DEPTH} levels, fair_core.hub.MAX_CONFIG_DEPTH")


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
    """Write the weights and config of a model atomically (used by runs and by ``save_pretrained``);
    a failed write (a full disk) raises ``OSError``, the previous files are kept."""
    with atomic_path(directory / WEIGHTS) as tmp:
        try:
            save_model(network, str(tmp), metadata={"format": "pt"})
        except SafetensorError as exc:
            raise safetensors_write_error(exc, directory / WEIGHTS) from None
    write_text(directory / CONFIG, json.dumps(config, indent=2))


def _lookup(kind: str, ref: TaskRef | PluginRef):
    """The plugin class a config names, or an error saying which package to install. Only the
    project's own packages are ever named: the config's ``package`` entry is a hint when it is one
    of them, never a name the user is told to install otherwise."""
    registry = get_registry()
    name = ref.name
    if name in registry.entries[kind]:
        return registry.entries[kind][name].obj
    package = normalise_package(ref.package or "")
    if package in KNOWN_PACKAGES and name not in KNOWN_PROVIDERS[kind]:
        raise FairError(f"config.json: the {SINGULAR[kind]} {name!r} comes from the package {package}, which is not "
                        f"installed or does not provide it (pip install -U {package})")
    return registry.get(kind, name, f"config.json {SINGULAR[kind]}.name").obj


def _task_section(config: dict[str, Any]) -> dict[str, Any]:
    """The config's task (configs written before tasks existed are classifiers)."""
    task = config.get("task") or {"name": "classification", "package": "fair-core"}
    if not isinstance(task, dict) or not isinstance(task.get("name"), str):
        raise FairError("config.json: task must be an object with a name")
    return task


def _data_info(parsed: ModelConfigFile) -> DataInfo:
    data, prep = parsed.data, parsed.preprocessing
    preprocessing = Preprocessing(prep.image_size, tuple(prep.mean), tuple(prep.std))
    return DataInfo(
        dataset=data.name, target=data.target, sensitive=tuple(data.sensitive),
        class_names=tuple(data.class_names), group_names=tuple(data.group_names),
        sensitive_values={k: tuple(v) for k, v in data.sensitive_values.items()},
        preprocessing=preprocessing, ignore_index=parsed.ignore_index,
    )


def _build(parsed: ModelConfigFile, info: DataInfo):
    """The method and the network a validated config describes (on the current default device)."""
    builder_cls, method_cls = _lookup("models", parsed.model), _lookup("methods", parsed.method)
    task = _lookup("tasks", parsed.task_ref)()
    # the saved weights replace any pretrained ones: rebuild without reading (or needing) them
    model_params = {**parsed.model.params}
    if "pretrained" in model_params:
        model_params["pretrained"] = False
    builder = builder_cls(validate_params(builder_cls.Params, model_params, "config.json model.params"))
    method_params = validate_params(method_cls.Params, parsed.method.params, "config.json method.params")
    try:
        method = method_cls(method_params, info, task)
        return method, method.build_model(builder.build(parsed.num_classes))
    except FairError:
        raise
    except Exception as exc:  # a plugin refusing what the config asks for
        raise FairError(f"config.json: cannot build the model {parsed.model.name!r} with the method "
                        f"{parsed.method.name!r}: {type(exc).__name__}: {exc}") from None


def _weights_header(weights: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a safetensors file, from its header alone."""
    regular_file(weights, WEIGHTS)
    check_safetensors_header(weights, f"{weights}: corrupt or incompatible weights")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FairError(f"{weights}: corrupt or incompatible weights: {exc}") from None


def _shown(names: list[str]) -> str:
    return "[" + ", ".join(quote(n, 80) for n in sorted(names)[:3]) + (", ..." if len(names) > 3 else "") + "]"


def check_weights(network: nn.Module, header: dict[str, tuple[int, ...]], weights: Path) -> None:
    """The tensors of ``weights`` (``header``: name -> shape) against the architecture of
    ``network`` (which may be on the meta device): the same names (a tensor shared under several
    names is stored once) and shapes."""
    named = network.state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}
    for name, tensor in named.items():
        aliases.setdefault(id(tensor), []).append(name)
    missing = [n for n, t in named.items() if not any(a in header for a in aliases[id(t)])]
    unexpected = [k for k in header if k not in named]
    if missing or unexpected:
        raise FairError(f"{weights}: weights do not match the architecture in config.json "
                        f"(missing {_shown(missing)}, unexpected {_shown(unexpected)})")
    for name, tensor in named.items():
        if name in header and tuple(header[name]) != tuple(tensor.shape):
            raise FairError(f"{weights}: the tensor {quote(name, 80)} has the shape {list(header[name])}, the architecture "
                            f"in config.json needs {list(tensor.shape)}")


class FairModel(nn.Module, ModelHubMixin, library_name="fair", tags=["fairness"]):
    """A trained model with its fairness method's inference rule and its preprocessing.

    :func:`from_pretrained` returns the model class of the config's task: a classifier
    (``predict``), a face embedder (``embed``) or a segmenter (``segment``); each takes a float
    tensor ``(N, 3, H, W)`` in [0, 1] of any size. ``class_names`` and ``group_names`` name the
    classes (identities of the training set for face models) and the protected groups.
    """

    def __init__(self, config: dict[str, Any], metrics: dict[str, Any] | None = None):
        super().__init__()
        validated = _VALIDATED.get()  # from_pretrained has just checked this very dict
        parsed = validated[1] if validated is not None and validated[0] is config else validate_config(config)
        self.fair_config, self.metrics = config, metrics
        self.task = parsed.task_ref.name
        self.info = _data_info(parsed)
        self.preprocessing = self.info.preprocessing
        self.method, self.network = _build(parsed, self.info)
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
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None, **model_kwargs: Any) -> FairModel:
        """Load a model from a Hub repo id or a local folder (``ModelHubMixin.from_pretrained``'s
        arguments). Replaces the mixin's, which reads ``config.json`` unbounded and unchecked
        before :meth:`_from_pretrained` could."""
        return cls._from_pretrained(model_id=str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir,
                                    force_download=force_download, local_files_only=local_files_only, token=token,
                                    **model_kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         config: dict[str, Any] | None = None, **kwargs) -> FairModel:
        def fetch(filename: str, required: bool = True) -> Path | None:
            local = Path(model_id)
            if local.is_dir():
                path = local / filename
                if os.path.lexists(path):  # what is not a regular file is refused by its reader
                    return path
                if required:
                    raise FairError(f"{model_id}: no {filename} in this folder")
                return None
            try:
                return Path(hf_hub_download(model_id, filename, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, local_files_only=local_files_only, token=token))
            except HFValidationError:
                raise FairError(f"{model_id}: neither a folder nor a Hub repo id (org/name)") from None
            except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError) as exc:
                if not required and isinstance(exc, EntryNotFoundError):
                    return None
                raise FairError(f"{model_id}: cannot get {filename}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else 'not found'}") from None

        from .report import read_metrics_file

        if config is None:
            config_path = fetch(CONFIG)
            config = read_config(config_path)
            source = str(config_path)
        else:
            source = CONFIG
        parsed = validate_config(config, source)
        model_class = _model_class(cls, parsed)
        metrics_path = fetch(METRICS, required=False)
        metrics = read_metrics_file(metrics_path) if metrics_path else None
        weights = fetch(WEIGHTS)
        header = _weights_header(weights)
        try:  # the architecture without its memory, checked against the weights before allocating it
            with torch.device("meta"):
                _, skeleton = _build(parsed, _data_info(parsed))
        except FairError:
            raise
        except Exception:  # a plugin that cannot build on the meta device: checked once built
            skeleton = None
        if skeleton is not None:
            check_weights(skeleton, header, weights)
        token_ = _VALIDATED.set((config, parsed))
        try:
            model = model_class(config, metrics)
        finally:
            _VALIDATED.reset(token_)
        if skeleton is None:
            check_weights(model.network, header, weights)
        try:
            missing, unexpected = load_model(model.network, str(weights), strict=False)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise FairError(f"{weights}: corrupt or incompatible weights: {exc}") from None
        if missing or unexpected:
            raise FairError(f"{weights}: weights do not match the architecture in config.json "
                            f"(missing {_shown(list(missing))}, unexpected {_shown(list(unexpected))})")
        return model.eval()


def _model_class(requested: type[FairModel], parsed: ModelConfigFile) -> type[FairModel]:
    """The model class of the config's task (its ``model_class``), checked against the class
    ``from_pretrained`` was called on."""
    task = parsed.task_ref
    task_name = task.name
    model_class = _lookup("tasks", task).model_class
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
        raise FairError(f"{name_or_path}: cannot load the model: {type(exc).__name__}: {exc}") from None


def load_run(run_dir: str | Path) -> FairModel:
    """A finished run's model with its metrics (what ``fair push`` uploads). The folder of a
    ``fair evaluate`` of one of this project's models gives that model (checked against the sha256
    recorded when it was evaluated) with the evaluation's metrics; an evaluation of a model from
    elsewhere (``timm:``, ``hf:``, ``onnx:``) is refused: its weights are not ours to re-host."""
    from .report import read_metrics_file

    run_dir = Path(run_dir)
    if not (run_dir / METRICS).is_file():
        raise FairError(f"{run_dir}: not a finished run (no metrics.json)")
    metrics = read_metrics_file(run_dir / METRICS)
    evaluation = metrics.get("evaluation")
    if evaluation is None:
        return from_pretrained(run_dir)
    source = evaluation.get("source") or {}
    if source.get("kind") != "fair":
        raise FairError(f"{run_dir}: an evaluation of {evaluation['model']}, a model fair did not train; fair push "
                        f"publishes fair's own models only (another's weights are not ours to re-host): share this "
                        f"folder's metrics.json with the model's own repository instead")
    from .sources import FairSource

    ref = source.get("path") or (f"{source.get('ref')}@{source['revision']}" if source.get("revision") else source.get("ref"))
    if not isinstance(ref, str) or not ref:
        raise FairError(f"{run_dir}: metrics.json evaluation.source names no model")
    try:
        loaded = FairSource().load(ref, FairSource.Options())
    except FairError as exc:
        raise FairError(f"{run_dir}: cannot load the model this folder evaluated: {exc}") from None
    if loaded.source["sha256"] != source.get("sha256"):
        raise FairError(f"{run_dir}: the weights of {ref} have changed since this evaluation (sha256 "
                        f"{str(source.get('sha256'))[:12]}... then, {loaded.source['sha256'][:12]}... now); evaluate it again")
    model = loaded.model
    model.metrics = metrics
    return model


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a finished run (weights, config, metrics, model card) to ``repo_id``; returns the commit URL."""
    model = load_run(run_dir)
    try:
        return str(model.push_to_hub(repo_id, private=private, token=token, model_card_kwargs={"repo_id": repo_id},
                                     commit_message=f"Upload fair model ({model.fair_config['method']['name']})"))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise FairError(f"push to {repo_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def read_image(path: str | Path, max_pixels: int = MAX_PREDICT_PIXELS) -> Tensor:
    """An image file as a float ``(3, H, W)`` tensor in [0, 1] (grayscale and alpha become RGB);
    an image of more than ``max_pixels`` pixels is refused from its header, before decoding."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = regular_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise FairError(f"{path}: {width}x{height} pixels, more than the {max_pixels} an image may have "
                                    f"(fair_core.hub.MAX_PREDICT_PIXELS)")
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FairError(f"{path}: refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise FairError(f"{path}: cannot decode the image: {type(exc).__name__}: {exc}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0
