"""The run spec (``fair run spec.json``): pydantic models, loading, overrides, error messages.

Every section forbids unknown keys. The ``params`` of the data, model and method sections are
checked against the chosen plugin's own ``Params`` model by :func:`resolve`, so an error names the
full path (``method.params.alpha``); ``eval.params`` against the task's ``EvalParams``. Every problem becomes one :class:`FairError` line.

A spec file is untrusted input with explicit bounds (the constants below): its size, its nesting,
no YAML aliases, the range of every number that sizes an allocation (seed, bootstrap, milestones),
and the size of what an error message quotes of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .errors import FairError
from .untrusted import check_nesting, quote, read_bounded

# --------------------------------------------------------------------------- bounds
# A spec is a few hundred bytes; 1 MiB leaves room for long lists and keeps reading and parsing
# it (with MAX_SPEC_ITEMS) well under a second and its memory in megabytes.
MAX_SPEC_BYTES = 2**20
# Sections and plugin params nest 3-4 levels; 32 keeps every recursive consumer (pydantic,
# json.dumps, the checkpoint's JSON) far from Python's recursion limit.
MAX_SPEC_DEPTH = 32
# Values in all (list items, object entries): a spec holds hundreds; 100 000 leaves room for long
# lists and keeps YAML's node graph (~0.5 KB a value) and every walk over the spec small.
MAX_SPEC_ITEMS = 100_000
# Plugin, attribute, split and metric names are identifiers; bounded so no message echoes a huge one.
MAX_NAME_CHARS = 200
# Lists a person writes (metrics, sensitive attributes, milestones); also bounds how many
# validation errors one list can produce.
MAX_LIST_ITEMS = 256
# Linux PATH_MAX: a longer output_dir cannot be opened anyway.
MAX_PATH_CHARS = 4096
# numpy seeds are 32-bit (np.random.seed), and the epoch seeds derived from it stay within torch's 64 bits.
MAX_SEED = 2**32 - 1
# The bootstrap allocates bootstrap x cells doubles (cells = groups x classes^2): 10 000 replicates
# is the customary upper end (the Monte Carlo error of a 95% percentile interval is then well
# below its width) and stays at 16 MB for 10 classes x 2 groups; 1e9 would be 64 GB after training.
MAX_BOOTSTRAP = 10_000
# How many validation errors one message lists (the rest are counted).
MAX_ERRORS_SHOWN = 5
# What a validation message may quote of pydantic's own text (it can embed a custom validator's input).
MAX_ERROR_TEXT = 300

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class _Section(BaseModel):
    # no inf/nan in any float field (lr, momentum, gamma, ...): every one of them scales training
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSpec(_Section):
    name: Name = Field("synthetic", description="registered dataset name (see `fair list`)")
    params: dict[str, Any] = Field(default_factory=dict, description="the dataset's own parameters")
    target: Name | None = Field(None, description="target attribute; the dataset's default when omitted")
    sensitive: list[Name] | None = Field(
        None, max_length=MAX_LIST_ITEMS, description="protected attribute(s); several give intersectional groups"
    )
    train_split: Name = "train"

    @field_validator("sensitive", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ModelSpec(_Section):
    name: Name = Field("small_cnn", description="registered model name")
    params: dict[str, Any] = Field(default_factory=dict, description="the model's own parameters")
    init: Annotated[str, Field(max_length=4096)] | None = Field(
        None, description="fine-tune: a finished run folder or Hub id (same model, params and classes) whose weights "
        "start the training instead of the model's own initialisation",
    )


class MethodSpec(_Section):
    name: Name = Field("erm", description="registered fairness method name")
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
    milestones: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [1 / 3, 2 / 3], max_length=MAX_LIST_ITEMS,
        description="multistep: fractions of the training (epochs, or max_steps) at which the lr is multiplied by gamma",
    )
    gamma: float = Field(0.1, gt=0, le=1)
    power: float = Field(0.9, gt=0, description="poly: lr_t = (lr - lr_min) (1 - t/T)^power + lr_min, as mmseg's PolyLR")
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="poly: lr_min as a fraction of the lr "
                                 "(mmseg's eta_min / lr; 1 keeps the lr constant, as ZUT's ADE20K config)")
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds python, numpy and torch (numpy takes 32 bits)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    log_every: int = Field(20, ge=1, description="log the training loss every N steps")
    loss: Literal["cross_entropy", "focal"] = Field(
        "cross_entropy", description="the task's default loss (what erm trains with): cross_entropy, the task's own; "
        "focal (classification only): -focal_alpha (1 - p_t)^focal_gamma log p_t over the softmax (Lin et al., "
        "ICCV 2017; fair_core.losses.focal_loss). Methods computing their own cross-entropy keep it",
    )
    focal_alpha: float = Field(0.25, gt=0, le=1, description="loss focal: the constant factor alpha (Lin et al.: "
                               "0.25; VLBC: 0.25); not used (nor recorded) with cross_entropy")
    focal_gamma: float = Field(2.0, ge=0, description="loss focal: the focusing parameter gamma (Lin et al.: 2; "
                               "VLBC: 3; 0 with alpha 1 is the cross-entropy); not used (nor recorded) with cross_entropy")

    @model_serializer(mode="wrap")
    def _loss_fields_when_used(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A spec that keeps the default loss dumps exactly as before these fields existed: its
        # hash (run.json, sweeps, a two-stage method's base), a checkpoint's spec (--resume) and
        # metrics.json are unchanged. With cross_entropy the focal fields change nothing trained.
        data = handler(self)
        if self.loss == "cross_entropy" and isinstance(data, dict):
            for key in _LOSS_FIELDS:
                data.pop(key, None)
        return data


_LOSS_FIELDS = ("loss", "focal_alpha", "focal_gamma")


class EvalDataSpec(_Section):
    name: Name = Field(description="registered dataset name of the evaluation data (see `fair list`)")
    params: dict[str, Any] = Field(default_factory=dict, description="the dataset's own parameters")
    target: Name | None = Field(None, description="target attribute; this dataset's default when omitted")
    sensitive: list[Name] | None = Field(
        None, max_length=MAX_LIST_ITEMS, description="protected attribute(s); this dataset's default when omitted"
    )

    @field_validator("sensitive", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class EvalSpec(_Section):
    split: Name = "test"
    data: EvalDataSpec | None = Field(None, description="evaluate on another dataset than the training one (face "
                                      "recognition: train on identities, test on RFW); eval.split is its split; its "
                                      "images are normalised as the training data's (the model's preprocessing)")
    metrics: list[Name] | None = Field(None, max_length=MAX_LIST_ITEMS,
                                       description="metric names; all registered metrics when omitted")
    batch_size: int = Field(256, ge=1)
    bootstrap: int = Field(1000, ge=0, le=MAX_BOOTSTRAP,
                           description="bootstrap replicates for confidence intervals (0: none)")
    confidence: float = Field(0.95, gt=0, lt=1)
    params: dict[str, Any] = Field(default_factory=dict, description="the task's own evaluation parameters "
                                   "(verification: flip, fpr, block_size; segmentation: per_image)")


class HubSpec(_Section):
    push: bool = Field(False, description="push the trained model and its card to the Hugging Face Hub at the end")
    repo_id: Name | None = Field(None, description="org/name of the Hub repository")
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
    output_dir: str = Field("runs/default", max_length=MAX_PATH_CHARS, description="where the run writes its outputs")
    hub: HubSpec = Field(default_factory=HubSpec)
    task: Name | None = Field(None, description="registered task: classification, verification, segmentation, ... "
                              "(see `fair list`); the dataset's own task when omitted")

    @field_validator("output_dir")
    @classmethod
    def _a_path(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("a path cannot hold a NUL byte")
        return value


# --------------------------------------------------------------------------- error messages
def _describe(error: dict[str, Any], model: type[BaseModel] | None) -> str:
    kind, msg = error["type"], error["msg"]
    if len(msg) > MAX_ERROR_TEXT:
        msg = msg[: MAX_ERROR_TEXT - 3] + "..."
    if kind == "extra_forbidden" and model is not None:
        allowed = _allowed_fields(model, error["loc"][:-1])
        return f"unknown field; allowed: {', '.join(allowed)}" if allowed else "unknown field (this takes no parameters)"
    if kind not in {"missing", "extra_forbidden"} and "input" in error:
        # quoted lazily and bounded: a YAML alias bomb or a 50 MB string costs what is shown
        return f"{msg} (got {quote(error['input'])})"
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
    """A field name as it reads in a message: plain names as they are, others JSON-quoted (one
    line, bounded: a key can be as long as the input)."""
    if isinstance(part, int):
        return str(part)
    text = str(part)
    return text if text.isidentifier() and len(text) <= MAX_NAME_CHARS else quote(text)


def validation_message(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line for the errors of ``exc``: ``field.path: what is wrong``, joined by ``; `` (the
    first :data:`MAX_ERRORS_SHOWN`, then how many more)."""
    parts = []
    for error in exc.errors(include_url=False)[:MAX_ERRORS_SHOWN]:
        loc = ".".join(_loc_part(p) for p in error["loc"][:12]) + ("..." if len(error["loc"]) > 12 else "")
        where = ".".join(p for p in (prefix, loc) if p) or "spec"
        parts.append(f"{where}: {_describe(error, model)}")
    if exc.error_count() > MAX_ERRORS_SHOWN:
        parts.append(f"and {exc.error_count() - MAX_ERRORS_SHOWN} more errors")
    return "; ".join(parts)


def validate_params(params_model: type[BaseModel], params: dict[str, Any], prefix: str) -> BaseModel:
    """Validate a plugin's ``params`` dict; errors name ``prefix.field``."""
    try:
        return params_model.model_validate(params)
    except ValidationError as exc:
        raise FairError(validation_message(exc, prefix, params_model)) from None


# --------------------------------------------------------------------------- loading
def _yaml_events_within_bounds(yaml, loader, text: str, path: Path, what: str) -> None:
    """One streaming pass over the YAML events, before anything is composed: refuse aliases (a spec
    has no need for them, and they are what expands a 1 KB file to 10**9 values, an alias bomb, or
    to a cycle; anchors alone are harmless), more than :data:`MAX_SPEC_ITEMS` values and nesting
    deeper than :data:`MAX_SPEC_DEPTH`."""
    depth = items = 0
    for event in yaml.parse(text, Loader=loader):
        mark = event.start_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        if isinstance(event, yaml.AliasEvent):
            raise FairError(f"{path}: invalid YAML{at}: YAML aliases (*{str(event.anchor)[:40]}) are not supported "
                            f"in a {what}; write the value out")
        if isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            items += 1
            if items > MAX_SPEC_ITEMS:
                raise FairError(f"{path}: invalid {what}: more than {MAX_SPEC_ITEMS} values "
                                f"(fair_core.spec.MAX_SPEC_ITEMS)")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                raise FairError(f"{path}: invalid {what}{at}: nested more than {MAX_SPEC_DEPTH} levels deep "
                                f"(fair_core.spec.MAX_SPEC_DEPTH)")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def parse_text(text: str, path: Path, yaml_format: bool, what: str = "spec") -> Any:
    """JSON or YAML ``text`` of the file ``path``; a problem is one line named by the parser that
    met it (and where). YAML is read with yaml's safe loader (no tag builds an object), after a
    streaming check of its events (:func:`_yaml_events_within_bounds`)."""
    if not yaml_format:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FairError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise FairError(f"{path}: invalid {what}: JSON nested too deeply (a {what} may nest {MAX_SPEC_DEPTH} levels, "
                            f"fair_core.spec.MAX_SPEC_DEPTH)") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise FairError(f"{path}: invalid JSON: {str(exc)[:MAX_ERROR_TEXT]}") from None
        check_nesting(data, MAX_SPEC_DEPTH, "fair_core.spec.MAX_SPEC_DEPTH", str(path),
                      MAX_SPEC_ITEMS, "fair_core.spec.MAX_SPEC_ITEMS")
        return data
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: faster, smaller
    try:
        _yaml_events_within_bounds(yaml, loader, text, path, what)
        return yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise FairError(f"{path}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except FairError:
        raise
    except RecursionError:
        raise FairError(f"{path}: invalid {what}: YAML nested too deeply (a {what} may nest {MAX_SPEC_DEPTH} levels, "
                        f"fair_core.spec.MAX_SPEC_DEPTH)") from None
    except Exception as exc:  # yaml.YAMLError, a value YAML cannot convert (an int of 5000 digits)
        raise FairError(f"{path}: invalid YAML: {type(exc).__name__}: {str(exc)[:MAX_ERROR_TEXT]}") from None


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or YAML spec file into a dict (no validation yet): a regular file of at most
    :data:`MAX_SPEC_BYTES`, YAML for ``.yaml``/``.yml``, JSON otherwise."""
    path = Path(path)
    raw = read_bounded(path, MAX_SPEC_BYTES, "fair_core.spec.MAX_SPEC_BYTES", "spec file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FairError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    data = parse_text(text, path, path.suffix.lower() in {".yaml", ".yml"})
    if not isinstance(data, dict):
        raise FairError(f"{path}: a spec must be an object with sections data, model, method, train, eval")
    check_nesting(data, MAX_SPEC_DEPTH, "fair_core.spec.MAX_SPEC_DEPTH", str(path),
                  MAX_SPEC_ITEMS, "fair_core.spec.MAX_SPEC_ITEMS")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides; values are parsed as JSON when they can be."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FairError(f"--set {quote(item)}: expected FIELD=VALUE, e.g. train.epochs=1")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except (RecursionError, ValueError):
            raise FairError(f"--set {quote(key.strip())}: the value nests too deeply or holds too large a number") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FairError(f"--set {quote(key)}: {quote(part)} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def parse_spec(data: dict[str, Any]) -> RunSpec:
    check_nesting(data, MAX_SPEC_DEPTH, "fair_core.spec.MAX_SPEC_DEPTH", "spec",
                  MAX_SPEC_ITEMS, "fair_core.spec.MAX_SPEC_ITEMS")
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
