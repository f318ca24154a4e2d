"""Metrics of every built-in task, each computed from one summable state.

* classification (:mod:`.classification`): group confusion counts ``counts[g, y, p]``;
* segmentation (:mod:`.segmentation`): pixel confusion matrices per group ``conf[g, y, p]``;
* verification: metrics come from plugins (fair-face) and read the gathered embeddings.

``from fair_core import metrics as M`` exposes the functions of both modules.
"""

from .classification import *  # noqa: F403
from .classification import __all__ as _classification
from .metric import Metric
from .segmentation import *  # noqa: F403
from .segmentation import __all__ as _segmentation

__all__ = ["Metric", *_classification, *_segmentation]
