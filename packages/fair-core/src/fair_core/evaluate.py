"""Evaluation: the one loop that measures a model on a split, for ``fair run`` and ``fair evaluate``.

:func:`evaluate` runs a task's :class:`~fair_core.tasks.Evaluation` over a dataset on every
process (each sample once, through ``accelerator.gather_for_metrics``) and :func:`build_result`
turns it into ``metrics.json``; the runner calls both after training, and ``fair evaluate`` calls
them on a model it did not train:

* ``MODEL`` is ``<prefix>:<ref>``, a registered :class:`~fair_core.sources.ModelSource` (``timm:``,
  ``hf:``, ``onnx:``, a plugin's), or, without a prefix, a finished run folder or one of this
  project's Hub ids (the built-in ``fair`` source, through :func:`fair_core.from_pretrained`:
  its preprocessing and inference rule, so an evaluation of ``runs/x`` on its own spec measures
  exactly what the run measured);
* the spec's ``data``, ``task`` and ``eval`` sections are used (``eval.data`` too), and of
  ``train`` only ``num_workers`` (DataLoader workers decoding the images) and ``seed`` (the
  bootstrap's); ``model``, ``method`` and the rest of ``train`` are ignored;
* the dataset delivers its images in [0, 1] at the model's ``input_size`` (the dataset's size
  when it has none), without the dataset's normalisation: each source applies its own;
* class scores are mapped onto the dataset's classes (:mod:`fair_core.label_map`);
* the output folder is claimed like a run's (lock, ``run.json``, ``--overwrite``) and gets the
  files of a run without a model or checkpoint: ``metrics.json`` (with an ``evaluation`` section:
  the model and its source, revision or file hash, the label map), the task's per-sample file
  and ``log.jsonl``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from pydantic import BaseModel
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .errors import FairError
from .label_map import LabelMap, build_label_map, read_label_map
from .metrics import Metric
from .tasks import Evaluation, Task

DEFAULT_SOURCE = "fair"  # MODEL without a prefix
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_.+-]*):(.*)$", re.DOTALL)


# --------------------------------------------------------------------------- the shared loop
def evaluation_loader(accelerator: Accelerator, task: Task, dataset, batch_size: int, num_workers: int) -> DataLoader:
    """The split in order, ``batch_size`` at a time, sharded over the processes."""
    return accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                          collate_fn=functools.partial(task.collate, info=dataset.info),
                                          pin_memory=torch.cuda.is_available()))


@torch.no_grad()
def evaluate(accelerator: Accelerator, task: Task, method: Any, model: nn.Module | None, dataset, batch_size: int,
             num_workers: int, sync_weights: bool = True) -> Evaluation:
    """The task's evaluation of every sample of ``dataset`` with ``method.predict`` / ``method.embed``
    on ``model``: each process runs its share of the batches, and what the task gathers is gathered
    from all processes, padding dropped. ``sync_weights``: every process first takes the main
    process's weights and buffers (BatchNorm statistics) — a trained model's, which the run saves."""
    loader = evaluation_loader(accelerator, task, dataset, batch_size, num_workers)
    network = accelerator.unwrap_model(model) if model is not None else None
    if network is not None:
        # on the plain module: no DDP collectives in evaluation
        if sync_weights and accelerator.num_processes > 1:
            for tensor in (*network.parameters(), *network.buffers()):
                torch.distributed.broadcast(tensor.data, src=0)
        network.eval()
    evaluation = task.evaluation(dataset)
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=None if accelerator.is_local_main_process else True):
        evaluation.update(accelerator.gather_for_metrics(evaluation.outputs(method, network, batch)))
    return evaluation


def build_result(spec: dict[str, Any], task: Task, data: dict[str, Any], gathered: Evaluation, metrics: list[Metric],
                 eval_spec: Any, seed: int, **extra: Any) -> dict[str, Any]:
    """``metrics.json``: the spec, the task, the data section, the task's metric sections of the
    ``gathered`` evaluation, then ``extra``."""
    return {"spec": spec, "task": task.name, "data": data, **task.summarize(gathered, metrics, eval_spec, seed), **extra}


def make_accelerator(output_dir: Path, append_log: bool, **kwargs: Any) -> Accelerator:
    """An Accelerator logging to ``log.jsonl`` (and TensorBoard when installed) in ``output_dir``;
    several processes without CUDA ask for Accelerate's multi-CPU (gloo) mode."""
    from .runner import JsonLinesTracker

    trackers: list[Any] = [JsonLinesTracker(output_dir / "log.jsonl", append=append_log)]
    if kwargs.pop("tensorboard", True):
        try:
            import tensorboard  # noqa: F401

            trackers.append("tensorboard")
        except ImportError:
            pass
    return Accelerator(log_with=trackers, project_dir=str(output_dir),
                       cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1, **kwargs)


# --------------------------------------------------------------------------- fair evaluate
class ResizeTo:
    """A float image ``(3, H, W)`` resized to ``size`` x ``size`` (bilinear, antialiased), as
    :meth:`fair_core.FairModel.preprocess`; unchanged when it already has that size."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Tensor) -> Tensor:
        if tuple(image.shape[-2:]) == (self.size, self.size):
            return image
        return F.interpolate(image[None].float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                             align_corners=False)[0]


class SourceMethod:
    """What a task's :class:`~fair_core.tasks.Evaluation` calls (``predict`` / ``embed``), on a
    :class:`~fair_core.sources.LoadedModel`: its scores mapped onto the dataset's classes."""

    def __init__(self, loaded, label_map: LabelMap | None, num_classes: int | None):
        self.loaded, self.label_map, self.num_classes = loaded, label_map, num_classes

    def predict(self, model: nn.Module | None, images: Tensor) -> Tensor:
        scores = self.loaded.scores(images)
        if self.label_map is not None:
            return self.label_map(scores)
        if self.num_classes is not None and scores.shape[1] != self.num_classes:
            raise FairError(f"MODEL: the model gives {scores.shape[1]} scores per sample and names no labels; the data "
                            f"has {self.num_classes} classes")
        return scores

    def embed(self, model: nn.Module | None, images: Tensor) -> Tensor:
        return self.loaded.embed(images)


@dataclass
class EvaluationPlan:
    """A ``fair evaluate`` checked and loaded, before anything is written."""

    model: str
    spec: Any  # RunSpec
    data: Any  # ResolvedData
    dataset: Any  # the evaluation split, as the model takes it
    loaded: Any  # LoadedModel
    label_map: LabelMap | None
    record: dict[str, Any] = field(default_factory=dict)  # metrics.json / run.json "evaluation"

    @property
    def recorded_spec(self) -> dict[str, Any]:
        """The spec fields an evaluation uses (a valid spec to evaluate again): ``data``, ``eval``,
        ``task``, ``output_dir`` and ``train``'s ``seed`` and ``num_workers``."""
        full = self.spec.model_dump(mode="json")
        return {"data": full["data"], "eval": full["eval"], "task": full["task"], "output_dir": full["output_dir"],
                "train": {"seed": full["train"]["seed"], "num_workers": full["train"]["num_workers"]}}


def split_model(model: str, registry) -> tuple[Any, str]:
    """(the source's registry entry, its ref) of a MODEL string: ``<prefix>:<ref>`` with a
    registered prefix, else a run folder or Hub id of the ``fair`` source. An unknown prefix (that
    is not an existing path) is one line naming the registered ones."""
    sources = registry.entries["sources"]
    match = _PREFIX.match(model)
    if match and match.group(1) in sources:
        if not match.group(2):
            raise FairError(f"MODEL: {model!r} names no model after the prefix {match.group(1)}:")
        return sources[match.group(1)], match.group(2)
    if match and not os.path.lexists(model):
        prefixes = ", ".join(f"{name}:" for name in registry.names("sources")) or "none installed"
        raise FairError(f"MODEL: unknown model source {match.group(1)!r} in {model!r}; sources: {prefixes} "
                        f"(without a prefix: a finished run folder or a fair Hub id)")
    return registry.get("sources", DEFAULT_SOURCE, "MODEL"), model


def load_model(model: str, options: dict[str, Any] | None = None, registry=None):
    """The :class:`~fair_core.sources.LoadedModel` a MODEL string names, with its source's
    ``options`` (validated against the source's ``Options``)."""
    from .plugins import get_registry
    from .spec import validate_params

    registry = registry or get_registry()
    entry, ref = split_model(model, registry)
    source_cls = entry.obj
    parsed: BaseModel = validate_params(source_cls.Options, dict(options or {}), "--option")
    try:
        return source_cls().load(ref, parsed)
    except FairError:
        raise
    except ImportError as exc:  # the source's library is an optional extra
        missing = f"the library {exc.name}" if exc.name else "a library that is not installed"
        raise FairError(f"MODEL: {entry.name}: models need {missing} (pip install '{source_cls.extra}')") from None
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise FairError(f"MODEL: cannot load {model!r}: {type(exc).__name__}: {text[:300]}") from None


def plan_evaluation(model: str, spec, label_map: str | Path | dict[str, Any] | None = None,
                    options: dict[str, Any] | None = None, registry=None) -> EvaluationPlan:
    """Check the spec, load the model and the evaluation split and build the label map: every
    user error is raised here, before the output folder is touched."""
    from .plugins import get_registry
    from .runner import resolve_data

    registry = registry or get_registry()
    data = resolve_data(spec, registry, training=False)
    task = data.task
    task_name = spec.task or data.dataset.tasks[0]
    mapping, map_file = None, None
    if isinstance(label_map, dict):
        mapping = {k: [v] if isinstance(v, str) else list(v) for k, v in label_map.items()}
    elif label_map is not None:
        map_file = label_map
        mapping = read_label_map(label_map)
    loaded = load_model(model, options, registry)
    if loaded.task != task_name:
        raise FairError(f"MODEL: {model} is a {loaded.task} model; the spec's task is {task_name} "
                        f"(the task field, or the task of its dataset)")
    source = spec.eval.data if spec.eval.data is not None else spec.data
    dataset = data.evaluation_dataset.load(spec.eval.split, source.target, source.sensitive, train=False, task=task)
    dataset = dataset.with_transform(ResizeTo(loaded.input_size) if loaded.input_size else None)
    info = dataset.info
    lmap = None
    record: dict[str, Any] = {"model": model, "source": loaded.source}
    if task.open_set or loaded.labels is None:
        if mapping is not None:
            raise FairError(f"--label-map: {model} names no labels to map (a {loaded.task} model"
                            f"{' gives embeddings' if task.open_set else ''})")
    else:
        lmap = build_label_map(info.class_names, loaded.labels, loaded.multi_label, mapping, map_file, model)
        if not lmap.identity:
            record["label_map"] = lmap.describe(info.class_names, loaded.labels)
    return EvaluationPlan(model, spec, data, dataset, loaded, lmap, record)


def run_evaluation(plan: EvaluationPlan, overwrite: bool = False) -> dict[str, Any]:
    """Claim the output folder (:class:`~fair_core.run_folder.RunFolder`), evaluate, write the
    outputs; returns metrics.json's content (empty on processes other than the main one)."""
    from .run_folder import RunFolder

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    with RunFolder(plan.spec.output_dir).claim(plan.recorded_spec, False, overwrite, world_size, evaluation=plan.record):
        return _evaluate(plan)


def _evaluate(plan: EvaluationPlan) -> dict[str, Any]:
    from . import __version__
    from .atomic import write_text
    from .runner import _flat_config

    spec, task, loaded, dataset = plan.spec, plan.data.task, plan.loaded, plan.dataset
    out = Path(spec.output_dir)
    accelerator = make_accelerator(out, append_log=False, tensorboard=False)
    accelerator.init_trackers("fair", config=_flat_config({**plan.recorded_spec, "evaluation": plan.record}))
    if loaded.module is not None:
        loaded.module.to(accelerator.device).eval()
    num_classes = None if task.open_set else dataset.info.num_classes
    method = SourceMethod(loaded, plan.label_map, num_classes)
    started = time.perf_counter()
    evaluation = evaluate(accelerator, task, method, loaded.module, dataset, spec.eval.batch_size,
                          spec.train.num_workers, sync_weights=False)
    if accelerator.device.type == "cuda":  # the last batches' kernels are part of the evaluation
        torch.cuda.synchronize(accelerator.device)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        info = dataset.info
        train_info = getattr(loaded, "train_info", None) if task.open_set else info
        data_section = task.data_section(train_info or info, info, spec.eval.split)
        if train_info is None:  # an external embedder: its training identities are unknown
            data_section.pop("training_identities", None)
        result = build_result(plan.recorded_spec, task, data_section, evaluation, plan.data.metrics, spec.eval,
                              spec.train.seed, evaluation=plan.record,
                              timing={"seconds": seconds, "images_per_second": len(dataset) / seconds if seconds else None,
                                      "processes": accelerator.num_processes},
                              packages=plan.data.packages, fair_version=__version__)
        try:
            task.write_outputs(out, evaluation)
            write_text(out / "metrics.json", json.dumps(result, indent=2))
        except OSError as exc:
            raise FairError(f"cannot write the results to {out}: {exc.strerror or exc}") from None
    accelerator.log({f"eval/{k}": v for k, v in result.get("fairness", {}).items() if v is not None})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def evaluate_model(model: str, spec, label_map: str | Path | dict[str, Any] | None = None,
                   options: dict[str, Any] | None = None, overwrite: bool = False, registry=None) -> dict[str, Any]:
    """``fair evaluate MODEL SPEC`` in Python: returns metrics.json's content."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_evaluation(plan_evaluation(model, spec, label_map, options, registry), overwrite)


IGNORED_SECTIONS = ("model", "method", "train", "hub")


def ignored_note(raw_spec: dict[str, Any], overrides: list[str]) -> str | None:
    """The note ``fair evaluate`` prints when the spec file (or ``--set``) fills sections it ignores."""
    present = [s for s in IGNORED_SECTIONS if s in raw_spec or any(o.split("=", 1)[0].split(".")[0] == s for o in overrides)]
    if not present:
        return None
    return (f"note: fair evaluate ignores the spec's {', '.join(present)} section(s)"
            + (" except train.num_workers (decoding workers) and train.seed (bootstrap)" if "train" in present else "")
            + "; it evaluates MODEL")


__all__ = ["EvaluationPlan", "SourceMethod", "build_result", "evaluate", "evaluate_model", "load_model",
           "plan_evaluation", "run_evaluation", "split_model"]
