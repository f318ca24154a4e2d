"""``onnx:FILE``: an ONNX model through onnxruntime, by default a face embedder as insightface ships them.

insightface's recognisers (``w600k_r50.onnx``, ``glintr100.onnx``, ...) take aligned RGB faces of
the model's input size (112) as ``(pixel - mean) / std`` on 0-255 values, NCHW; ``mean`` and ``std``
are 127.5 unless the graph normalises itself (an MXNet export: ``Sub`` and ``Mul`` among its first 8
nodes, then 0 and 1). Its ``ArcFaceONNX.get_feat`` reads BGR images with OpenCV and swaps them
(``swapRB=True``), so the network itself sees RGB. The options default to exactly that; each can be
set (``channel_order: bgr``, ``layout: NHWC``, another ``input_size``). With ``task:
classification`` the first output is the logits, named by ``labels``.

The session runs on CUDA when onnxruntime has that provider, else on the CPU, with as many threads
as torch uses. The file's sha256 and the preprocessing in effect are recorded in ``source``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from ..errors import FairError
from ..hub import MAX_IMAGE_SIZE, MAX_NUM_CLASSES
from ..sources import LoadedModel, ModelSource, file_sha256
from ..untrusted import regular_file

INSIGHTFACE_SIZE = 112
INSIGHTFACE_MEAN = INSIGHTFACE_STD = 127.5
# What onnxruntime calls the element types fed from float images.
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxOptions(BaseModel):
    """Options of ``onnx:`` models (insightface's defaults)."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["verification", "classification"] = "verification"
    # classification: the names of the outputs (default class_0, class_1, ...)
    labels: list[str] | None = Field(None, min_length=1, max_length=MAX_NUM_CLASSES)
    # the square side fed to the model; null: the model's own (a static input shape), else 112
    input_size: int | None = Field(None, ge=1, le=MAX_IMAGE_SIZE)
    # on 0-255 pixel values; null: insightface's rule (127.5, or 0 and 1 for a graph that normalises itself)
    mean: float | None = None
    std: float | None = Field(None, gt=0)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @model_validator(mode="after")
    def _labels_for_classifiers(self) -> OnnxOptions:
        if self.labels is not None and self.task != "classification":
            raise ValueError("labels: only with task classification")
        return self


def insightface_normalisation(path: Path) -> tuple[float, float]:
    """insightface's (mean, std) for the model at ``path``: 0 and 1 when one of its first 8 nodes is a
    ``Sub`` and one a ``Mul`` (MXNet exports normalise inside the graph), else 127.5 and 127.5."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (INSIGHTFACE_MEAN, INSIGHTFACE_STD)


class OnnxModel(LoadedModel):
    """An onnxruntime session on float images in [0, 1]: resized to ``input_size`` when they have
    another size (bilinear, as OpenCV's blobFromImages), scaled to 0-255, normalised, reordered."""

    def __init__(self, session: Any, options: OnnxOptions, size: int, mean: float, std: float, batch: int | None,
                 dtype: type, source: dict[str, Any]):
        self.session = session
        self.options = options
        self.input_size = size
        self.mean, self.std = mean, std
        self.batch = batch  # a fixed batch dimension of the graph, else None
        self.dtype = dtype
        self.source = source
        self.task = options.task
        self.multi_label = False
        self.module = None
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.labels = None
        if options.task == "classification":
            width = self._run(torch.zeros(1, 3, size, size)).shape[1]
            labels = options.labels or [f"class_{i}" for i in range(width)]
            if len(labels) != width:
                raise FairError(f"onnx options.labels: {len(labels)} names for the model's {width} outputs")
            self.labels = tuple(labels)

    def _run(self, images: Tensor) -> Tensor:
        x = images.detach().float()
        size = self.input_size
        if tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                                antialias=True)
        x = (x * 255.0 - self.mean) / self.std
        if self.options.channel_order == "bgr":
            x = x.flip(1)
        if self.options.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        array = np.ascontiguousarray(x.cpu().numpy().astype(self.dtype, copy=False))
        step = self.batch or len(array) or 1
        outputs = []
        for start in range(0, len(array), step):
            chunk = array[start:start + step]
            if self.batch and len(chunk) < self.batch:  # a fixed batch: pad the last one
                chunk = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out = self.session.run([self.output_name], {self.input_name: chunk})[0]
            outputs.append(np.asarray(out)[: len(array) - start])
        if not outputs:
            return torch.zeros(0, 0, device=images.device)
        out = np.concatenate(outputs)
        return torch.from_numpy(out.reshape(len(array), -1).astype(np.float32)).to(images.device)

    def embed(self, images: Tensor) -> Tensor:
        if self.task != "verification":
            raise NotImplementedError("an ONNX classifier gives no embeddings")
        return self._run(images)

    def scores(self, images: Tensor) -> Tensor:
        if self.task != "classification":
            raise NotImplementedError("an ONNX embedder gives class scores only with the option task: classification")
        return self._run(images)


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxSource(ModelSource):
    prefix: ClassVar[str] = "onnx"
    extra: ClassVar[str] = "fair-core[onnx]"
    description: ClassVar[str] = "an ONNX model in onnxruntime, by default an insightface face embedder: onnx:FILE"
    Options: ClassVar[type[BaseModel]] = OnnxOptions

    def load(self, ref: str, options: BaseModel) -> LoadedModel:
        import onnxruntime as ort  # ImportError: the caller's install hint

        assert isinstance(options, OnnxOptions)
        where = f"onnx:{ref}"
        path = regular_file(Path(ref).expanduser(), "ONNX model")
        mean, std = options.mean, options.std
        if mean is None or std is None:
            detected = insightface_normalisation(path)
            mean = detected[0] if mean is None else mean
            std = detected[1] if std is None else std
        settings = ort.SessionOptions()
        settings.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(path), settings, providers=providers)
        except Exception as exc:  # not an ONNX file, an operator onnxruntime lacks
            raise FairError(f"{where}: onnxruntime cannot load it: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise FairError(f"{where}: the model takes {len(inputs)} inputs "
                            f"({', '.join(f'{i.name} {i.shape}' for i in inputs[:3])}); one image batch (4 dims) is needed")
        shape = list(inputs[0].shape)
        channels, height, width = (shape[1], shape[2], shape[3]) if options.layout == "NCHW" else (shape[3], shape[1], shape[2])
        if _static(channels) not in (None, 3):
            raise FairError(f"{where}: input {inputs[0].name} {shape}: {channels} channels in layout {options.layout}, "
                            f"3 needed (set the option layout)")
        height, width = _static(height), _static(width)
        if height is not None and width is not None and height != width:
            raise FairError(f"{where}: input {inputs[0].name} {shape}: not square; only square inputs are fed")
        if options.input_size is not None and height is not None and options.input_size != height:
            raise FairError(f"{where}: options.input_size {options.input_size}: the model's input is {height} px")
        size = options.input_size or height or INSIGHTFACE_SIZE
        dtype = INPUT_TYPES.get(inputs[0].type)
        if dtype is None:
            raise FairError(f"{where}: input {inputs[0].name} of type {inputs[0].type}; a float input is needed")
        source = {"kind": "onnx", "ref": ref, "path": str(path.resolve()), "sha256": file_sha256(path),
                  "input_size": size, "mean": mean, "std": std, "channel_order": options.channel_order,
                  "layout": options.layout}
        return OnnxModel(session, options, size, mean, std, _static(shape[0]), dtype, source)
