"""fair-data's plugin: registers its datasets with fair-core."""

from fair_core import hookimpl

from .celeba import CelebA
from .huggingface import HuggingFace
from .synthetic import Synthetic
from .utkface import UTKFace


@hookimpl
def fair_register_datasets(register):
    register("synthetic", Synthetic)
    register("celeba", CelebA)
    register("utkface", UTKFace)
    register("hf", HuggingFace)
