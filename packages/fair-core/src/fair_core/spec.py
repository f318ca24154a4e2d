"""The run spec (``fair run spec.json``): pydantic models, loading, overrides, error messages.

Every section forbids unknown keys. The ``params`` of the data, model and method sections are
checked against the chosen plugin's own ``Params`` model by :func:`resolve`, so an error names the
full path (``method.params.alpha``); ``eval.params`` against the task's ``EvalParams``. Every problem becomes one :class:`FairError` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import FairError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Section):
    name: str = Field("synthetic", description="registered dataset name (see `fair list`)")
    params: dict[str, Any] = Field(default_factory=dict, description="the dataset's own parameters")
    target: str | None = Field(None, description="target attribute; the dataset's default when omitted")
    sensitive: list[str] | None = Field(
        None, description="protected attribute(s); several give intersectional groups"
    )
    train_split: str = "train"

    @field_validator("sensitive", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ModelSpec(_Section):
    name: str = Field("small_cnn", description="registered model name")
    params: dict[str, Any] = Field(default_factory=dict, description="the model's own parameters")


class MethodSpec(_Section):
    name: str = Field("erm", description="registered fairness method name")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's own parameters")


class TrainSpec(_Section):
    epochs: int = Field(10, ge=1, description="passes over the training set (epoch-based training)")
    max_steps: int | None = Field(
        None, ge=1, description="iteration-based training instead of epochs: stop after this many optimisation steps "
        "(as many passes as needed, the last one partial; `epochs` is then not used); the scheduler then counts steps",
    )
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "cosine", "multistep", "poly"] = "none"
    milestones: list[float] = Field(
        default_factory=lambda: [1 / 3, 2 / 3],
        description="multistep: fractions of the training (epochs, or max_steps) at which the lr is multiplied by gamma",
    )
    gamma: float = Field(0.1, gt=0, le=1)
    power: float = Field(0.9, gt=0, description="poly: lr_t = (lr - lr_min) (1 - t/T)^power + lr_min, as mmseg's PolyLR")
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="poly: lr_min as a fraction of the lr "
                                 "(mmseg's eta_min / lr; 1 keeps the lr constant, as ZUT's ADE20K config)")
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    log_every: int = Field(20, ge=1, description="log the training loss every N steps")


class EvalSpec(_Section):
    split: str = "test"
    metrics: list[str] | None = Field(None, description="metric names; all registered metrics when omitted")
    batch_size: int = Field(256, ge=1)
    bootstrap: int = Field(1000, ge=0, description="bootstrap replicates for confidence intervals (0: none)")
    confidence: float = Field(0.95, gt=0, lt=1)
    params: dict[str, Any] = Field(default_factory=dict, description="the task's own evaluation parameters "
                                   "(verification: flip, fpr, block_size; segmentation: per_image)")


class HubSpec(_Section):
    push: bool = Field(False, description="push the trained model and its card to the Hugging Face Hub at the end")
    repo_id: str | None = Field(None, description="org/name of the Hub repository")
    private: bool = False

    @model_validator(mode="after")
    def _repo_when_pushing(self) -> HubSpec:
        if self.push and not self.repo_id:
            raise ValueError("repo_id is required when push is true")
        return self


class RunSpec(_Section):
    """One training + evaluation run."""

    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output_dir: str = Field("runs/default", description="where the run writes its outputs")
    hub: HubSpec = Field(default_factory=HubSpec)
    task: str | None = Field(None, description="registered task: classification, verification, segmentation, ... "
                             "(see `fair list`); the dataset's own task when omitted")


# --------------------------------------------------------------------------- error messages
def _describe(error: dict[str, Any], model: type[BaseModel] | None) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden" and model is not None:
        allowed = _allowed_fields(model, error["loc"][:-1])
        return f"unknown field; allowed: {', '.join(allowed)}" if allowed else "unknown field (this takes no parameters)"
    if kind not in {"missing", "extra_forbidden"} and "input" in error:
        shown = json.dumps(error["input"], default=str)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{msg} (got {shown})"
    return msg


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _loc_part(part: Any) -> str:
    """A field name as it reads in a message: plain names as they are, others JSON-quoted (one line)."""
    return str(part) if isinstance(part, int) or str(part).isidentifier() else json.dumps(str(part))


def validation_message(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line for all errors of ``exc``: ``field.path: what is wrong``, joined by ``; ``."""
    parts = []
    for error in exc.errors():
        loc = ".".join(_loc_part(p) for p in error["loc"])
        where = ".".join(p for p in (prefix, loc) if p) or "spec"
        parts.append(f"{where}: {_describe(error, model)}")
    return "; ".join(parts)


def validate_params(params_model: type[BaseModel], params: dict[str, Any], prefix: str) -> BaseModel:
    """Validate a plugin's ``params`` dict; errors name ``prefix.field``."""
    try:
        return params_model.model_validate(params)
    except ValidationError as exc:
        raise FairError(validation_message(exc, prefix, params_model)) from None


# --------------------------------------------------------------------------- loading
def read_spec_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML spec file into a dict (no validation yet)."""
    path = Path(path)
    if not path.is_file():
        raise FairError(f"spec file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FairError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise FairError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FairError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise FairError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FairError(f"{path}: a spec must be an object with sections data, model, method, train, eval")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides; values are parsed as JSON when they can be."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FairError(f"--set {item!r}: expected FIELD=VALUE, e.g. train.epochs=1")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FairError(f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def parse_spec(data: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise FairError(validation_message(exc, model=RunSpec)) from None


def load_spec(path: str | Path, overrides: list[str] = (), output_dir: str | None = None) -> RunSpec:
    data = apply_overrides(read_spec_file(path), list(overrides))
    if output_dir is not None:
        data["output_dir"] = output_dir
    return parse_spec(data)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`RunSpec` (for editors)."""
    schema = RunSpec.model_json_schema()
    schema["title"] = "fair run spec"
    return schema
