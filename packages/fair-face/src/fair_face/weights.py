"""Convert insightface IResNet weights (a ``backbone.pth``) into the safetensors file that
``iresnet*``'s ``pretrained`` reads (``fair face convert-weights SRC DST --arch iresnet50``).

insightface's ``arcface_torch`` saves ``backbone.module.state_dict()`` with ``torch.save``
(``backbone.pth``, ``model.pt``): a flat dict of tensors named ``conv1.weight``, ``bn1.*``,
``prelu.weight``, ``layer<i>.<j>.{bn1,conv1,bn2,prelu,conv2,bn3}.*``,
``layer<i>.0.downsample.{0,1}.*``, ``bn2.*``, ``fc.*``, ``features.*``. Its resume checkpoints
(``checkpoint_gpu_<rank>.pt``) hold that dict under ``state_dict_backbone`` beside the optimiser
state; both are accepted. insightface never saves the DDP wrapper's own state dict, so there is no
``module.`` prefix to strip, and a ``module.``-prefixed file is refused as unmapped names.

Renaming (:func:`fair_key`): the stem and stages go under ``body.``, the embedding head
(``bn2``, ``fc``, ``features``) under ``head.``: the state-dict keys of the encoder
:func:`fair_face.iresnet.iresnet_encoder` builds. Every tensor's shape is checked against a freshly
built encoder of ``arch`` (on the meta device); floating tensors are stored as float32.

A ``.pth`` is a pickle, so this is the one place of the project that calls ``torch.load``, and only
with ``weights_only=True``: its unpickler rebuilds tensors and plain containers and refuses every
other global, so nothing in the file is imported or called. Everything else (a non-tensor value, a
name that does not map, a missing key, a wrong shape, a file too large) is one
:class:`~fair_core.FairError` line naming the file; the output is written atomically (temporary
file, then a rename), with the architecture and the source file's SHA-256 in its metadata.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor

from fair_core import FairError
from fair_core.checkpoint import write_safetensors
from fair_core.untrusted import quote, regular_file, size_text

from .iresnet import IRESNET_LAYERS, build_encoder_on_meta

# insightface's largest IResNet state dict (iresnet200 fp32) is ~0.4 GB and a resume checkpoint
# adds SGD momentum and the rank's share of the partial-FC classifier; 4 GiB leaves room for
# those and bounds what torch.load reads into memory.
MAX_SOURCE_BYTES = 4 * 2**30
CHECKPOINT_BACKBONE_KEY = "state_dict_backbone"  # arcface_torch's resume checkpoints
FORMAT = "fair_face.iresnet encoder state dict"
_BODY_PREFIXES = ("conv1.", "bn1.", "prelu.", "layer1.", "layer2.", "layer3.", "layer4.")
_HEAD_PREFIXES = ("bn2.", "fc.", "features.")
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.")


def fair_key(insightface_key: str) -> str | None:
    """The encoder key of an insightface IResNet key (``None`` when it is not one)."""
    if insightface_key.startswith(_BODY_PREFIXES):
        return "body." + insightface_key
    if insightface_key.startswith(_HEAD_PREFIXES):
        return "head." + insightface_key
    return None


def convert_insightface_weights(src: Path, dst: Path, arch: str, *, width: int = 64, input_size: int = 112,
                                embedding_dim: int = 512) -> dict:
    """Convert the insightface state dict at ``src`` into the safetensors file ``dst`` for
    ``arch`` (``width``, ``input_size`` and ``embedding_dim`` as the model's params: insightface's
    64, 112 and 512 by default). Returns what was converted: ``arch``, ``source``,
    ``source_sha256``, ``destination``, ``tensors``, ``parameters`` (numbers in the learnable
    tensors) and ``counters_filled`` (BatchNorm ``num_batches_tracked`` counters the file lacked,
    set to 0). Any problem is one :class:`FairError` line; ``dst`` is then left untouched."""
    if arch not in IRESNET_LAYERS:
        raise FairError(f"--arch: unknown architecture {quote(arch)}; allowed: {', '.join(IRESNET_LAYERS)}")
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise FairError(f"{dst}: the converted weights must be a .safetensors file (the suffix iresnet's pretrained expects)")
    src = regular_file(src, "insightface weights file")
    if dst.exists() and dst.resolve() == src.resolve():
        raise FairError(f"{dst}: the output would replace the source file; choose another name")
    size = src.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise FairError(f"{src}: {size_text(size)}, larger than the {size_text(MAX_SOURCE_BYTES)} an insightface weights file "
                        f"may have (fair_face.weights.MAX_SOURCE_BYTES)")
    digest = _sha256(src)
    state = _tensor_dict(_load_weights_only(src), src)
    encoder = build_encoder_on_meta(arch, width=width, input_size=input_size, embedding_dim=embedding_dim)
    own = encoder.state_dict()
    what = f"{arch} (width {width}, input_size {input_size}, embedding_dim {embedding_dim})"
    converted: dict[str, Tensor] = {}
    for key, tensor in state.items():
        target = fair_key(key)
        if target is None:
            raise FairError(f"{src}: {quote(key)} is not a key of an insightface IResNet (expected conv1, bn1, prelu, "
                            f"layer1-4, bn2, fc, features)")
        if target not in own:
            raise FairError(f"{src}: {quote(key)} has no place in {what}{_depth_hint(state, arch)}")
        if tuple(tensor.shape) != tuple(own[target].shape):
            raise FairError(f"{src}: {key} has shape {tuple(tensor.shape)}, {what} expects {tuple(own[target].shape)}")
        converted[target] = tensor.to(torch.int64 if key.endswith("num_batches_tracked") else torch.float32).contiguous()
    filled = 0
    for target in own:
        if target in converted:
            continue
        if not target.endswith("num_batches_tracked"):
            key = target.split(".", 1)[1]
            raise FairError(f"{src}: missing {key}, which {what} needs{_depth_hint(state, arch)}")
        converted[target] = torch.zeros((), dtype=torch.int64)
        filled += 1
    metadata = {"format": FORMAT, "arch": arch, "width": str(width), "input_size": str(input_size),
                "embedding_dim": str(embedding_dim), "source_file": src.name, "source_sha256": digest}
    try:
        write_safetensors(dst, {k: converted[k] for k in own}, metadata)
    except OSError as exc:
        raise FairError(f"{dst}: cannot write the converted weights: {exc.strerror or exc}") from None
    parameters = {name for name, _ in encoder.named_parameters()}
    return {
        "arch": arch, "source": str(src), "source_sha256": digest, "destination": str(dst),
        "tensors": len(converted), "parameters": sum(converted[k].numel() for k in parameters),
        "counters_filled": filled,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_weights_only(src: Path):
    """``torch.load(src, weights_only=True)``: the restricted unpickler, which rebuilds tensors and
    plain containers and refuses any other global before it is imported."""
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused global, not a torch file, truncated zip: all one line
        text = str(exc)
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        reason = found.group(1) if found else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise FairError(f"{src}: not a plain PyTorch state dict (read with torch.load(weights_only=True)): "
                        f"{reason[:300]}") from None


def _tensor_dict(loaded, src: Path) -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` dict of a loaded file (a bare state dict, or arcface_torch's
    resume checkpoint holding it under ``state_dict_backbone``)."""
    if isinstance(loaded, dict) and CHECKPOINT_BACKBONE_KEY in loaded:
        loaded = loaded[CHECKPOINT_BACKBONE_KEY]
    if not isinstance(loaded, dict):
        raise FairError(f"{src}: holds a value of type {type(loaded).__name__}, not a flat dict of tensors (an IResNet state dict)")
    if not loaded:
        raise FairError(f"{src}: holds an empty dict, not an IResNet state dict")
    for key, value in loaded.items():
        if not isinstance(key, str):
            raise FairError(f"{src}: the key {quote(key)} is not a tensor name; expected a flat dict of tensors")
        if not isinstance(value, Tensor):
            raise FairError(f"{src}: {quote(key)} holds a value of type {type(value).__name__}, not a tensor; "
                            f"expected a flat dict of tensors")
    return loaded


def _depth_hint(state: dict[str, Tensor], arch: str) -> str:
    """`` (the file holds an iresnet50, layers 3, 4, 14, 3)`` when its blocks per stage name
    another known depth."""
    blocks = [0, 0, 0, 0]
    for key in state:
        found = _BLOCK.match(key)
        if found:
            stage, index = int(found.group(1)) - 1, int(found.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    layers = tuple(blocks)
    for name, known in IRESNET_LAYERS.items():
        if known == layers and name != arch:
            return f" (the file holds an {name}: pass --arch {name})"
    return f" (the file's stages have {', '.join(map(str, layers))} blocks)" if any(layers) else ""
