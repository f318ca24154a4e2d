"""fair-data's plugin: registers its datasets with fair-core."""

from fair_core import hookimpl

from .ade20k import ADE20K
from .celeba import CelebA
from .celebahq import CelebAHQ
from .cifar10s import CIFAR10S
from .concat import Concat
from .fairface import FairFace
from .huggingface import HuggingFace
from .image_folder import ImageFolder
from .synthetic import Synthetic
from .synthetic_faces import SyntheticFaces
from .synthetic_segmentation import SyntheticSegmentation
from .utkface import UTKFace


@hookimpl
def fair_register_datasets(register):
    register("synthetic", Synthetic)
    register("synthetic_faces", SyntheticFaces)
    register("synthetic_segmentation", SyntheticSegmentation)
    register("celeba", CelebA)
    register("celebahq", CelebAHQ)
    register("utkface", UTKFace)
    register("fairface", FairFace)
    register("cifar10s", CIFAR10S)
    register("hf", HuggingFace)
    register("ade20k", ADE20K)
    register("image_folder", ImageFolder)
    register("concat", Concat)


@hookimpl
def fair_register_generators(register):
    from .synthetic_generator import SyntheticGenerator

    register("synthetic", SyntheticGenerator)
