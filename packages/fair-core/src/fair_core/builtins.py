"""fair-core's own plugin: the built-in tasks, backbones and metrics, registered explicitly."""

from .hookspecs import hookimpl
from .metrics import BUILTIN_METRICS, SEGMENTATION_METRICS
from .models import BUILTIN_MODELS
from .tasks import BUILTIN_TASKS


@hookimpl
def fair_register_models(register):
    for name, builder in BUILTIN_MODELS.items():
        register(name, builder)


@hookimpl
def fair_register_metrics(register):
    for metric in (*BUILTIN_METRICS, *SEGMENTATION_METRICS):
        register(metric.name, metric)


@hookimpl
def fair_register_tasks(register):
    for name, task in BUILTIN_TASKS.items():
        register(name, task)
