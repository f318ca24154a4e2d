"""pluggy hook specifications of the ``fair`` plugin system.

A plugin is a module (or object) that implements some of these hooks and is listed under the
``fair`` entry-point group of its distribution::

    [project.entry-points.fair]
    my_methods = "my_package.plugin"

Each hook receives a ``register(name, obj)`` callback, so one plugin can register many things.
"""

import pluggy

hookspec = pluggy.HookspecMarker("fair")
hookimpl = pluggy.HookimplMarker("fair")


@hookspec
def fair_register_methods(register):
    """Register fairness methods: ``register("erm", ERM)`` with a ``fair_core.Method`` subclass."""


@hookspec
def fair_register_datasets(register):
    """Register datasets: ``register("synthetic", Synthetic)`` with a ``fair_core.DatasetBuilder`` subclass."""


@hookspec
def fair_register_models(register):
    """Register backbones: ``register("small_cnn", SmallCNN)`` with a ``fair_core.ModelBuilder`` subclass."""


@hookspec
def fair_register_metrics(register):
    """Register metrics: ``register("spd", Metric(...))`` with a ``fair_core.metrics.Metric``."""


@hookspec
def fair_register_tasks(register):
    """Register tasks: ``register("segmentation", SegmentationTask)`` with a ``fair_core.tasks.Task`` subclass."""


@hookspec
def fair_register_commands(register):
    """Register command groups of the ``fair`` command line: ``register("face", app)`` with a
    ``typer.Typer`` makes ``fair face ...`` run its commands (their user errors, raised as
    :class:`fair_core.FairError`, are one line and exit code 2 like core's)."""


@hookspec
def fair_register_model_sources(register):
    """Register model sources of ``fair evaluate``: ``register("timm", TimmSource)`` with a
    :class:`fair_core.sources.ModelSource` subclass, whose prefix is the registered name
    (``fair evaluate timm:resnet18 spec.json``)."""


@hookspec
def fair_register_generators(register):
    """Register image generators of `fair augment`: ``register("diffae", DiffAEGenerator)`` with a
    :class:`fair_core.augment.Generator` subclass."""


@hookspec
def fair_register_labellers(register):
    """Register labellers of `fair augment`: ``register("classifiers", Classifiers)`` with a
    :class:`fair_core.augment.Labeller` subclass."""


@hookspec
def fair_register_editors(register):
    """Register latent editors of `fair augment`: ``register("contraclip", ContraCLIP)`` with a
    :class:`fair_core.augment.Editor` subclass."""
