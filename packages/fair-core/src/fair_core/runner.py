"""The one training and evaluation loop every method and every task runs through, on ``accelerate``.

The same code runs on a CPU, one GPU, or many processes (``accelerate launch``). What differs
between classification, verification and segmentation (batches, default loss, what evaluation
gathers, metrics and outputs) is the run's :class:`~fair_core.tasks.Task`. Runs are
seeded per epoch (model init, sampling order, dropout, augmentation), so a run resumed from the
checkpoint of a completed epoch ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import DistributedDataParallelKwargs
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from . import __version__
from .atomic import open_no_follow, write_text
from .base_model import load_base, train_stage_one
from .checkpoint import check_resume_state, load_checkpoint, save_checkpoint
from .data import DatasetBuilder, FairDataset
from .errors import FairError
from .evaluate import build_result, evaluate, make_accelerator
from .hub import model_config, write_model_files
from .losses import configure_task_loss
from .method import Method, TrainingData
from .metrics import Metric
from .models import ModelBuilder
from .plugins import Registry, get_registry
from .run_folder import RunFolder, differing_fields, is_main_process
from .spec import RunSpec, TrainSpec, validate_params
from .tasks import Evaluation, Task

CHECKPOINT = "checkpoint.safetensors"


# --------------------------------------------------------------------------- resolution
@dataclass
class ResolvedRun:
    """A spec with every plugin looked up and every ``params`` validated."""

    spec: RunSpec
    task: Task
    dataset: DatasetBuilder
    model: ModelBuilder
    method_cls: type[Method]
    method_params: Any
    metrics: list[Metric]
    packages: dict[str, str]
    eval_dataset: DatasetBuilder | None = None  # eval.data's builder; None: the training dataset's

    @property
    def evaluation_dataset(self) -> DatasetBuilder:
        return self.eval_dataset if self.eval_dataset is not None else self.dataset


def _supporting(registry: Registry, kind: str, task: str) -> str:
    """Names of the registered methods or models that support ``task``."""
    return ", ".join(n for n in registry.names(kind) if registry.entries[kind][n].obj.supports(task)) or "none installed"


@dataclass
class ResolvedData:
    """What evaluation needs of a spec: its task, the evaluation data and the metrics."""

    task: Task
    dataset: DatasetBuilder  # data's builder
    eval_dataset: DatasetBuilder | None  # eval.data's builder; None: data's
    metrics: list[Metric]
    packages: dict[str, str]  # task and data packages

    @property
    def evaluation_dataset(self) -> DatasetBuilder:
        return self.eval_dataset if self.eval_dataset is not None else self.dataset


def resolve_data(spec: RunSpec, registry: Registry | None = None, training: bool = True) -> ResolvedData:
    """Look up the spec's dataset(s), task and metrics, check that they serve one task, and
    validate their params and splits (what ``fair run`` and ``fair evaluate`` share; an evaluation,
    ``training=False``, reads no training split); raises :class:`FairError`."""
    registry = registry or get_registry()
    data_entry = registry.get("datasets", spec.data.name, "data.name")
    dataset = data_entry.obj(validate_params(data_entry.obj.Params, spec.data.params, "data.params"), spec.data.name)
    task_name = spec.task or dataset.tasks[0]
    task_entry = registry.get("tasks", task_name, "task")
    if task_name not in dataset.tasks:
        raise FairError(f"task: the dataset {spec.data.name} serves the {' and '.join(dataset.tasks)} task, not {task_name}")
    task = task_entry.obj(validate_params(task_entry.obj.EvalParams, spec.eval.params, "eval.params"))
    eval_dataset = None
    if spec.eval.data is not None:
        eval_entry = registry.get("datasets", spec.eval.data.name, "eval.data.name")
        eval_dataset = eval_entry.obj(validate_params(eval_entry.obj.Params, spec.eval.data.params, "eval.data.params"),
                                      spec.eval.data.name)
        if task_name not in eval_dataset.tasks:
            raise FairError(f"eval.data.name: the dataset {spec.eval.data.name} serves the "
                            f"{' and '.join(eval_dataset.tasks)} task, not {task_name}")
    for field_name, split, builder in (("data.train_split", spec.data.train_split, dataset),
                                       ("eval.split", spec.eval.split, eval_dataset or dataset)):
        if field_name == "data.train_split" and not training:
            continue
        if split not in builder.splits:
            raise FairError(f"{field_name}: unknown split {split!r} for {builder.name}; available: {', '.join(builder.splits)}")
    # in registration order: a plugin lists its metrics (and a table its columns) in reading order
    task_metrics = [n for n, e in registry.entries["metrics"].items() if e.obj.task == task_name]
    metrics = []
    for name in spec.eval.metrics if spec.eval.metrics is not None else task_metrics:
        metric = registry.get("metrics", name, "eval.metrics").obj
        if metric.task != task_name:
            raise FairError(f"eval.metrics: {name!r} is a {metric.task} metric; {task_name} metrics: "
                            f"{', '.join(task_metrics) or 'none installed'}")
        metrics.append(metric)
    return ResolvedData(task, dataset, eval_dataset, metrics, {"task": task_entry.package, "data": data_entry.package})


def resolve(spec: RunSpec, registry: Registry | None = None) -> ResolvedRun:
    """Look up the spec's plugins, check that they serve one task, and validate their params;
    raises :class:`FairError`."""
    registry = registry or get_registry()
    registry.get("datasets", spec.data.name, "data.name")
    model_entry = registry.get("models", spec.model.name, "model.name")
    method_entry = registry.get("methods", spec.method.name, "method.name")
    data = resolve_data(spec, registry)
    task_name = spec.task or data.dataset.tasks[0]
    if not method_entry.obj.supports(task_name):
        raise FairError(f"method.name: {spec.method.name} supports the {', '.join(method_entry.obj.tasks)} task, "
                        f"not {task_name}; methods for {task_name}: {_supporting(registry, 'methods', task_name)}")
    if not model_entry.obj.supports(task_name):
        raise FairError(f"model.name: {spec.model.name} is a model for the {' and '.join(model_entry.obj.tasks)} task, "
                        f"not {task_name}; models for {task_name}: {_supporting(registry, 'models', task_name)}")
    model = model_entry.obj(validate_params(model_entry.obj.Params, spec.model.params, "model.params"))
    method_params = validate_params(method_entry.obj.Params, spec.method.params, "method.params")
    packages = {**data.packages, "model": model_entry.package, "method": method_entry.package}
    resolved = ResolvedRun(spec, data.task, data.dataset, model, method_entry.obj, method_params, data.metrics, packages,
                           data.eval_dataset)
    configure_task_loss(data.task, spec.train)  # train.loss: refused by a task it does not apply to
    if spec.train.loss != "cross_entropy" and not method_entry.obj.uses_task_loss:
        raise FairError(f"train.loss: {spec.train.loss} is not used by the method {spec.method.name}, which computes "
                        "its own loss (the task's loss is used by erm, us, os, and by zut over those)")
    method_entry.obj.check_run(resolved)
    return resolved


# --------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch + 1


class EpochSampler(Sampler[int]):
    """A permutation (or weighted draws with replacement) that depends only on (seed, epoch), so
    every process of a distributed run, and a resumed run, draws the same order."""

    def __init__(self, num_samples: int, seed: int, weights: Tensor | None = None, shuffle: bool = True,
                 order: Callable[[torch.Generator], Tensor] | None = None):
        self.num_samples, self.seed, self.weights, self.shuffle, self.epoch = num_samples, seed, weights, shuffle, 0
        self.order = order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.order is not None:
            order = torch.as_tensor(self.order(generator), dtype=torch.long)
            if order.numel() != self.num_samples:
                raise RuntimeError(f"an epoch order must give {self.num_samples} positions, not {order.numel()}")
        elif self.weights is not None:
            order = torch.multinomial(self.weights.double(), self.num_samples, replacement=True, generator=generator)
        elif self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


class JsonLinesTracker(GeneralTracker):
    """An Accelerate tracker that appends one JSON object per ``log`` call to ``log.jsonl``."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, path: Path, append: bool):
        super().__init__()
        self.path, self.append = path, append
        self._handle = None  # opened on first use: only the main process logs

    @property
    def tracker(self):
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._handle = open_no_follow(self.path, self.append)
            except OSError as exc:
                raise FairError(f"output_dir: cannot write {self.path}: {exc.strerror or exc} "
                                f"(a symlink there is refused)") from None
        return self._handle

    def store_init_configuration(self, values: dict) -> None:
        self.log({"config": values})

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        record = {"time": time.time(), "step": step, **{k: _plain(v) for k, v in values.items()}}
        self.tracker.write(json.dumps(record) + "\n")
        self.tracker.flush()

    def finish(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _flat_config(spec: RunSpec | dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)

    walk("", spec if isinstance(spec, dict) else spec.model_dump(mode="json"))
    return flat


def schedule_factor(train: TrainSpec, total: int):
    """The lr multiplier after ``t`` of ``total`` scheduler units (epochs, or steps with
    ``max_steps``): cosine to 0, multistep (``gamma`` at each milestone fraction), or poly
    (mmseg's PolyLR: ``(1 - min) (1 - t/T)^power + min``, ``min = min_lr_factor``). A stage
    with no loop training (``total`` 0: a post-processing method's own fit) gets a constant 1."""
    if total <= 0:
        return lambda t: 1.0
    if train.scheduler == "cosine":
        return lambda t: 0.5 * (1 + math.cos(math.pi * t / total))
    if train.scheduler == "multistep":
        milestones = [round(m * total) for m in train.milestones]
        return lambda t: train.gamma ** sum(t >= s for s in milestones)
    if train.scheduler == "poly":
        low = train.min_lr_factor
        return lambda t: (1 - low) * max(0.0, 1 - t / total) ** train.power + low
    return lambda t: 1.0


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically; a failed write (disk full, permissions) keeps the previous one."""
    try:
        save_checkpoint(path, state)
    except OSError as exc:
        raise FairError(f"cannot write the checkpoint {path}: {exc.strerror or exc}; "
                        f"the previous checkpoint (if any) is kept") from None


def check_readable(dataset: FairDataset, split: str, workers: int) -> None:
    """Decode every image (and mask) of ``dataset`` once; a :class:`FairError` naming the
    unreadable files (the first three, and how many) otherwise."""
    from .data_stats import unreadable_images

    bad = unreadable_images(dataset, workers, desc=f"checking the {split} images")
    if bad:
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise FairError(f"data: {len(bad)} unreadable file(s) in the {split} split, found before training: "
                        f"{'; '.join(bad[:3])}{more} (`fair data check --images` lists them all)")


def check_resumable(state: dict[str, Any], spec: RunSpec, world_size: int, path: Path) -> None:
    """Refuse a resume that cannot end where the interrupted run would have, saying why: a
    result-determining field of the spec changed (output_dir, eval, logging and workers may), the
    number of processes changed (the data order and batch statistics depend on it). The
    checkpoint's content against the model (:func:`~fair_core.checkpoint.check_resume_state`) is
    checked once the model is built."""
    saved = state.get("spec")
    changed = differing_fields(saved, spec.model_dump(mode="json")) if isinstance(saved, dict) else ["spec: missing"]
    if changed:
        shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise FairError(f"--resume: the spec differs from the one of the checkpoint {path} in {shown}")
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        raise FairError(f"--resume: the checkpoint {path} was written by a run of {saved_world} process(es), this "
                        f"run has {world_size}; resume with --num-processes {saved_world} (bit-for-bit resume "
                        f"depends on the number of processes)")


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Runs one resolved spec: pre-process, build, train, post-process, evaluate, write outputs.

    Methods see the trainer in their hooks: ``step(loss)``, ``make_loader(...)``,
    ``make_optimizer(...)``, ``accelerator``, ``epoch``, ``device``, ``log(...)``.
    """

    def __init__(self, run: ResolvedRun):
        self.run_spec, self.spec = run, run.spec
        self.output_dir = Path(self.spec.output_dir)
        self.epoch = 0
        self.train = self.spec.train  # the recipe of this loop: the spec's, or a two-stage method's own
        self.epochs = self.train.epochs  # passes of this run (with max_steps: as many as the steps need)
        self.global_step = 0
        self.accelerator: Accelerator | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.last_stage = True  # False for stage 1 of a two-stage run (fair_core.base_model)

    # ------------------------------------------------------------------ for methods
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def make_optimizer(self, parameters, lr: float | None = None) -> torch.optim.Optimizer:
        train = self.train
        lr = train.lr if lr is None else lr
        if train.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)
        optimizer = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
        return optimizer(parameters, lr=lr, weight_decay=train.weight_decay)

    def make_loader(
        self, dataset: FairDataset, batch_size: int | None = None, sampling_weights: Tensor | None = None,
        shuffle: bool = True, seed_offset: int = 0, epoch_order: Callable[[torch.Generator], Tensor] | None = None,
    ) -> DataLoader:
        """A DataLoader prepared for this run's processes; shuffled per epoch from the run's seed
        (or in the ``epoch_order`` it gives, see :class:`~fair_core.method.TrainingData`)."""
        sampler = EpochSampler(len(dataset), self.spec.train.seed + seed_offset, sampling_weights, shuffle, epoch_order)
        loader = DataLoader(
            dataset, batch_size=batch_size or self.train.batch_size, sampler=sampler,
            num_workers=self.spec.train.num_workers,
            collate_fn=functools.partial(self.run_spec.task.collate, info=dataset.info),
            pin_memory=torch.cuda.is_available(), persistent_workers=self.spec.train.num_workers > 0,
        )
        prepared = self.accelerator.prepare(loader)
        self._loaders.append(prepared)
        return prepared

    def step(self, loss: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Backward pass and one step of ``optimizer`` (default: the first one)."""
        optimizer = optimizer or self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        optimizer.step()

    def log(self, values: dict[str, Any]) -> None:
        self.accelerator.log({k: _plain(v) for k, v in values.items()}, step=self.global_step)

    # ------------------------------------------------------------------ the run
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Read the data (a bad spec writes nothing), claim the output folder
        (:class:`~fair_core.run_folder.RunFolder`), and run."""
        spec, run, task = self.spec, self.run_spec, self.run_spec.task
        data = spec.data
        train_set = run.dataset.load(data.train_split, data.target, data.sensitive, train=True, task=task)
        if spec.eval.data is None:
            eval_set = run.dataset.load(spec.eval.split, data.target, data.sensitive, train=False, task=task)
        else:
            eval_set = run.evaluation_dataset.load(spec.eval.split, spec.eval.data.target, spec.eval.data.sensitive,
                                                   train=False, task=task)
            # normalised as the model's training data (what the saved model and fair evaluate do), not as
            # the evaluation dataset's own default
            eval_set = eval_set.with_transform(run.dataset.eval_transform())
            if not task.open_set and eval_set.info.class_names != train_set.info.class_names:
                raise FairError(f"eval.data: the classes of {spec.eval.data.name} ({', '.join(eval_set.info.class_names[:5])}"
                                f"...) are not the training data's ({', '.join(train_set.info.class_names[:5])}...); a "
                                f"{task.name} model is evaluated on the classes it was trained on")
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        with RunFolder(self.output_dir).claim(spec.model_dump(mode="json"), resume, overwrite, world_size):
            base_source = None
            if run.method_cls.two_stage:  # the base model's source; stage 1 trains it when not given
                # the method's own recipe is checked before stage 1 spends its time
                run.method_cls(run.method_params, train_set.info, task).stage_train(spec.train)
                base_source = run.method_params.base or train_stage_one(spec, resume, overwrite)
            return self._fit(train_set, eval_set, resume, world_size, base_source)

    def _fit(self, train_set: FairDataset, eval_set: FairDataset, resume: bool, world_size: int,
             base_source: str | Path | None = None) -> dict[str, Any]:
        spec, run, task = self.spec, self.run_spec, self.run_spec.task
        seed_everything(spec.train.seed)
        info = train_set.info
        if is_main_process():  # an unreadable evaluation image must not strand a trained model
            check_readable(eval_set, spec.eval.split, spec.train.num_workers)

        checkpoint_path = self.output_dir / CHECKPOINT
        state = load_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None
        if state is not None:
            check_resumable(state, spec, world_size, checkpoint_path)

        ddp = DistributedDataParallelKwargs(find_unused_parameters=run.method_cls.ddp_find_unused_parameters)
        self.accelerator = accelerator = make_accelerator(self.output_dir, append_log=state is not None,
                                                          mixed_precision=spec.train.mixed_precision,
                                                          kwargs_handlers=[ddp])
        accelerator.init_trackers("fair", config=_flat_config(spec))
        self._loaders: list[DataLoader] = []

        method = run.method_cls(run.method_params, info, task)
        self.train = method.stage_train(spec.train)
        self.epochs = self.train.epochs
        training: TrainingData = method.prepare_data(train_set, torch.Generator().manual_seed(spec.train.seed))
        backbone = run.model.build(info.num_classes)
        if spec.model.init is not None:  # fine-tuning: the named model's weights, trainable
            backbone.load_state_dict(load_base(spec.model.init, run, info, field="model.init").state_dict())
        if base_source is not None:
            method.use_base(load_base(base_source, run, info).to(accelerator.device), backbone)
        model = method.build_model(backbone)
        self.optimizers = method.configure_optimizers(model, self.make_optimizer)
        model, *self.optimizers = accelerator.prepare(model, *self.optimizers)
        train_loader = self.make_loader(training.dataset, sampling_weights=training.sampling_weights,
                                        epoch_order=training.epoch_order)
        max_steps = self.train.max_steps
        if max_steps is not None:  # iteration-based: passes as needed, the scheduler counts steps
            if len(train_loader) == 0:
                raise FairError("train.max_steps: the training set gives no batch")
            self.epochs = math.ceil(max_steps / len(train_loader))
        factor = schedule_factor(self.train, self.epochs if max_steps is None else max_steps)
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in self.optimizers]

        start_epoch, post_trained = 0, False
        if state is not None:
            check_resume_state(state, accelerator.unwrap_model(model), self.optimizers, self.epochs, checkpoint_path, schedulers)
            accelerator.unwrap_model(model).load_state_dict(state["model"])
            for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
                optimizer.load_state_dict(saved)
            for scheduler, saved in zip(schedulers, state["schedulers"], strict=True):
                scheduler.load_state_dict(saved)
            method.load_state_dict(state["method"])
            start_epoch, self.global_step, post_trained = state["epoch"] + 1, state["global_step"], state["post_trained"]

        method.setup(model, self)

        def save(epoch: int, post_trained: bool) -> None:
            if accelerator.is_main_process:
                write_checkpoint(checkpoint_path, {
                    "epoch": epoch, "global_step": self.global_step, "post_trained": post_trained,
                    "spec": spec.model_dump(mode="json"),
                    "model": accelerator.unwrap_model(model).state_dict(),
                    "optimizers": [o.state_dict() for o in self.optimizers],
                    "schedulers": [s.state_dict() for s in schedulers],
                    "method": method.state_dict(),
                    "world_size": accelerator.num_processes,
                })
            accelerator.wait_for_everyone()

        def step_schedulers() -> None:
            with warnings.catch_warnings():  # an optimiser a method did not step is fine
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
                for scheduler in schedulers:
                    scheduler.step()

        started, start_step = time.perf_counter(), self.global_step
        for epoch in range(start_epoch, self.epochs):
            self.epoch = epoch
            seed_everything(epoch_seed(spec.train.seed, epoch))
            for loader in self._loaders:  # Accelerate's loader passes the epoch on to our sampler
                loader.set_epoch(epoch)
            model.train()
            method.on_epoch_start(model, self)
            total, count = 0.0, 0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                       disable=None if accelerator.is_local_main_process else True)
            for step, batch in enumerate(bar):
                logs = method.training_step(model, batch, self)
                loss = float(logs["loss"])
                if not math.isfinite(loss):
                    raise FairError(
                        f"training diverged: loss is {loss} at epoch {epoch + 1}, step {step + 1}; "
                        f"the last good checkpoint is {checkpoint_path if epoch > 0 else 'none (first epoch)'}"
                    )
                self.global_step += 1
                total, count = total + loss, count + 1
                if self.global_step % spec.train.log_every == 0:
                    self.log({f"train/{k}": v for k, v in logs.items()})
                bar.set_postfix(loss=f"{total / count:.4f}")
                if max_steps is not None:
                    step_schedulers()
                    if self.global_step >= max_steps:
                        break
            if max_steps is None:
                step_schedulers()
            method.on_epoch_end(model, self)
            self.log({"train/epoch_loss": total / max(count, 1), "epoch": epoch + 1,
                      "lr": self.optimizers[0].param_groups[0]["lr"]})
            save(epoch, post_trained=False)
        train_seconds = time.perf_counter() - started
        epochs_run, steps_run = self.epochs - start_epoch, self.global_step - start_step

        post_seconds = None
        if not post_trained:
            self.epoch = self.epochs
            post_started = time.perf_counter()
            method.post_train(model, self)
            post_seconds = time.perf_counter() - post_started
            save(self.epochs - 1, post_trained=True)

        evaluation = self.evaluate(method, model, eval_set)
        result: dict[str, Any] = {}
        if accelerator.is_main_process:
            result = build_result(
                spec.model_dump(mode="json"), task, task.data_section(info, eval_set.info, spec.eval.split), evaluation,
                run.metrics, spec.eval, spec.train.seed,
                timing={"epochs_timed": epochs_run, "steps_timed": steps_run,
                        "seconds_per_epoch": train_seconds / epochs_run if epochs_run else None,
                        "seconds_per_step": train_seconds / steps_run if steps_run else None,
                        "seconds_post_train": post_seconds},
                packages=run.packages, fair_version=__version__,
            )
            try:
                self._write_outputs(accelerator.unwrap_model(model), info, evaluation, result)
            except OSError as exc:
                raise FairError(f"cannot write the results to {self.output_dir}: {exc.strerror or exc}") from None
        accelerator.log({f"eval/{k}": v for k, v in result.get("fairness", {}).items() if v is not None})
        accelerator.wait_for_everyone()  # no process tears the group down while another still writes
        if self.last_stage:
            accelerator.end_training()
        else:  # stage 1 of a two-stage run: its logs end, the process group stays for stage 2
            for tracker in accelerator.trackers:
                tracker.finish()
        return result

    def evaluate(self, method: Method, model: nn.Module, dataset: FairDataset) -> Evaluation:
        """The task's evaluation of every sample of ``dataset`` (:func:`fair_core.evaluate.evaluate`,
        the loop ``fair evaluate`` runs too): each process runs its share of the batches on the main
        process's weights and buffers, and what the task gathers is gathered from all processes."""
        return evaluate(self.accelerator, self.run_spec.task, method, model, dataset, self.spec.eval.batch_size,
                        self.spec.train.num_workers)

    def _write_outputs(self, model: nn.Module, info, evaluation: Evaluation, result) -> None:
        out = self.output_dir
        write_model_files(out, model, model_config(self.run_spec, info))
        self.run_spec.task.write_outputs(out, evaluation)
        write_text(out / "metrics.json", json.dumps(result, indent=2))


def run(spec: RunSpec, resume: bool = False, registry: Registry | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Validate and run ``spec`` (and push it when ``hub.push`` is set); returns metrics.json's content."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = Trainer(resolve(spec, registry)).fit(resume=resume, overwrite=overwrite)
    if result and spec.hub.push:
        from .hub import push_run

        push_run(spec.output_dir, spec.hub.repo_id, private=spec.hub.private)
    return result
