"""fair-methods' plugin: registers its methods with fair-core."""

from fair_core import hookimpl

from .erm import ERM


@hookimpl
def fair_register_methods(register):
    register("erm", ERM)
