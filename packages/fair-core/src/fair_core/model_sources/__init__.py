"""The built-in model sources of ``fair evaluate``: models of other libraries, each with that
library's own preprocessing (see :mod:`fair_core.sources` for the interface).

| prefix | module | library (extra) |
|---|---|---|
| ``timm:`` | :mod:`.timm_source` | timm (``fair-core[timm]``) |
| ``hf:`` | :mod:`.transformers_source` | transformers (``fair-core[transformers]``) |
| ``onnx:`` | :mod:`.onnx_source` | onnxruntime + onnx (``fair-core[onnx]``) |

Importing this package imports none of those libraries: each is imported when a model of its
source is loaded (a missing one is an ImportError, which the caller turns into the install hint).
"""

from .onnx_source import OnnxSource
from .timm_source import TimmSource
from .transformers_source import TransformersSource

BUILTIN_SOURCES = {source.prefix: source for source in (TimmSource, TransformersSource, OnnxSource)}

__all__ = ["BUILTIN_SOURCES", "OnnxSource", "TimmSource", "TransformersSource"]
