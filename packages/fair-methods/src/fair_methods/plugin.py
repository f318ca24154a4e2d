"""fair-methods' plugin: registers its methods with fair-core."""

from fair_core import hookimpl

from .adversarial import Adversarial
from .bias_contrastive import BiasContrastive
from .bias_mimicking import BiasMimicking
from .domain_independent import DomainIndependent
from .erm import ERM
from .faap import FAAP
from .fair_reprogram import FairReprogram
from .fdr import FDR
from .flac import FLAC
from .mfd import MFD
from .resampling import Oversampling, Undersampling, Upweighting
from .vlbc.finetune import VLBC
from .zut import ZUT

METHODS = {
    "erm": ERM,
    "us": Undersampling,
    "os": Oversampling,
    "uw": Upweighting,
    "bm": BiasMimicking,
    "di": DomainIndependent,
    "adv": Adversarial,
    "bcbb": BiasContrastive,
    "flac": FLAC,
    "mfd": MFD,
    "zut": ZUT,
    "fdr": FDR,
    "fair_reprogram": FairReprogram,
    "faap": FAAP,
    "vlbc": VLBC,
}


@hookimpl
def fair_register_methods(register):
    for name, method in METHODS.items():
        register(name, method)


@hookimpl
def fair_register_generators(register):
    from .vlbc.generator import DiffAEGenerator

    register("diffae", DiffAEGenerator)


@hookimpl
def fair_register_labellers(register):
    from .vlbc.labeller import Classifiers

    register("classifiers", Classifiers)


@hookimpl
def fair_register_editors(register):
    from .vlbc.contraclip import ContraCLIP

    register("contraclip", ContraCLIP)
