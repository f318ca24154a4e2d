"""fair-core's own plugin: the built-in tasks, backbones, metrics and model sources, registered explicitly."""

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


@hookimpl
def fair_register_model_sources(register):
    # imported here: a source module that fails to import is a warning in `fair list`, not a crash
    # (their libraries, timm, transformers, onnxruntime, are imported only when a model is loaded)
    from .sources import FairSource

    register(FairSource.prefix, FairSource)
    from .model_sources.onnx_source import OnnxSource
    from .model_sources.timm_source import TimmSource
    from .model_sources.transformers_source import TransformersSource

    for source in (TimmSource, TransformersSource, OnnxSource):
        register(source.prefix, source)
