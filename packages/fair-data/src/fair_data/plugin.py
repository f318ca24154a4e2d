"""fair-data's plugin: registers its datasets with fair-core."""

from fair_core import hookimpl

from .synthetic import Synthetic


@hookimpl
def fair_register_datasets(register):
    register("synthetic", Synthetic)
