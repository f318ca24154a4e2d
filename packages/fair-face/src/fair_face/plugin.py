"""fair-face's plugin: registers its backbones and verification metrics with fair-core."""

from fair_core import hookimpl
from fair_core.metrics import Metric

from . import operating_point as op
from .ddl import DistributionDistillation
from .face_zip import FaceZip
from .iresnet import IRESNET_BUILDERS
from .margin_method import MarginSoftmax
from .mixfairface import MixFairFace
from .models import SmallEmbeddingCNN
from .multibranch import MultiBranch
from .rfw import RFW
from .rfw_val import RFW_VAL_METRICS
from .val_inst import VAL_INST_METRICS

VERIFICATION_METRICS = tuple(
    Metric(name, compute, section, higher, description, task="verification", column=column)
    for name, compute, section, higher, description, column in (
        ("tpr_at_fpr", op.true_positive_rate, "overall", True, "TPR of all genuine pairs at the eval.params.fpr threshold", None),
        ("tpr_gap", op.tpr_gap, "fairness", False, "max - min group TPR at that threshold", None),
        ("worst_group_tpr", op.worst_group_tpr, "fairness", True, "lowest group TPR at that threshold", None),
        ("fpr_ratio", op.fpr_ratio, "fairness", False, "max / min group FPR at that threshold", None),
        ("group_tpr", op.group_true_positive_rate, "groups", True, "TPR of each group at that threshold", "tpr"),
        ("group_fpr", op.group_false_positive_rate, "groups", False, "FPR of each group at that threshold", "fpr"),
    )
)


@hookimpl
def fair_register_models(register):
    register("small_embedding_cnn", SmallEmbeddingCNN)
    for name, builder in IRESNET_BUILDERS.items():
        register(name, builder)


@hookimpl
def fair_register_metrics(register):
    for metric in (*VERIFICATION_METRICS, *RFW_VAL_METRICS, *VAL_INST_METRICS):
        register(metric.name, metric)


@hookimpl
def fair_register_methods(register):
    register("margin", MarginSoftmax)
    register("multibranch", MultiBranch)
    register("ddl", DistributionDistillation)
    register("mixfairface", MixFairFace)


@hookimpl
def fair_register_commands(register):
    from .cli import face_app

    register("face", face_app)


@hookimpl
def fair_register_datasets(register):
    register("rfw", RFW)
    register("face_zip", FaceZip)
