"""fair-core: specs, plugin system, runner, fairness metrics and the ``fair`` command line."""

__version__ = "0.1.0"

from .data import DataInfo, DatasetBuilder, FairDataset, NoParams, Preprocessing, SplitData  # noqa: E402
from .errors import FairError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .hub import FairModel, from_pretrained  # noqa: E402
from .method import Method, TrainingData  # noqa: E402
from .models import Classifier, ModelBuilder  # noqa: E402
from .spec import RunSpec  # noqa: E402

__all__ = [
    "Classifier",
    "DataInfo",
    "DatasetBuilder",
    "FairDataset",
    "FairError",
    "FairModel",
    "Method",
    "ModelBuilder",
    "NoParams",
    "Preprocessing",
    "RunSpec",
    "SplitData",
    "TrainingData",
    "__version__",
    "from_pretrained",
    "hookimpl",
]
