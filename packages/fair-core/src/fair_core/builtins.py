"""fair-core's own plugin: the built-in backbones and fairness metrics, registered explicitly."""

from .hookspecs import hookimpl
from .metrics import BUILTIN_METRICS
from .models import BUILTIN_MODELS


@hookimpl
def fair_register_models(register):
    for name, builder in BUILTIN_MODELS.items():
        register(name, builder)


@hookimpl
def fair_register_metrics(register):
    for metric in BUILTIN_METRICS:
        register(metric.name, metric)
