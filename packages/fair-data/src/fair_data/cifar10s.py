"""CIFAR-10S (Wang et al., "Towards Fairness in Visual Recognition: Effective Strategies for Bias
Mitigation", CVPR 2020): CIFAR-10 with colour vs grayscale skewed by class.

Built from CIFAR-10 as distributed, either

* the official python batches folder ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``, ``batches.meta``). These files are pickles. Their opcodes are first walked
  without building anything (:func:`check_batch_pickle`): only the opcodes and calls a batch holds
  (numpy's array and dtype reconstruction, ``_codecs.encode(..., "latin1")``) are accepted, and
  the opcode count, the memo and the elements the pickle would build (counted with repeats, as a
  traversal sees them) are bounded; then an unpickler that only finds those numpy constructors
  reads them, so reading a batch cannot run code nor take unbounded memory or time; or
* a Hugging Face dataset (``uoft-cs/cifar10`` on the Hub, or its parquet / ``save_to_disk``
  folder) with an image column and a ``ClassLabel`` label column.

The construction of the paper (and of the fairness study):

* train: all 50,000 training images; in each even class (0, 2, 4, 6, 8) exactly
  ``round(skew_ratio * n)`` images are grayscale, in each odd class exactly
  ``round((1 - skew_ratio) * n)`` (seeded choice). Protected attribute ``color``: 1 = grayscale.
* test: the first ``n - val_per_class`` test images of each class (900 of 1,000), each present
  twice, once in colour and once in grayscale (18,000);
* val: the last ``val_per_class`` (100) test images of each class, in both versions (2,000).

Grayscale is the ITU-R 601 luma (PIL's ``"L"`` mode) copied to three channels. Training augments
with a 4-pixel padded random crop and a horizontal flip, as in the paper's code.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData

from .huggingface import load_split, require_columns
from .images import COLOR_VALUES, MAX_FILE_BYTES, check_pixels, one_line, open_image, read_bytes, to_grayscale

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

MAX_PICKLE_OPCODES = 200_000
"""Most opcodes of a batch pickle: a real batch has about 30,000 (10,000 labels, 10,000 file names with
their memo puts, one data string), so this leaves a margin of 6 and bounds the walk's time."""

MAX_PICKLE_MEMO = 50_000
"""Most memo entries (and the largest memo index) of a batch pickle: a real batch memoizes about
10,000 objects (its file names); an index also sizes the unpickler's memo table, so it is bounded too."""

MAX_PICKLE_ELEMENTS = 2**26
"""Most elements a batch pickle may build, counted with repeats as a traversal (``numpy.asarray``) sees
them: characters of strings plus items of containers, a memoized object counted each time it is reused.
A real batch builds about 31 million (its 30,720,000 data bytes); a memo bomb of a few hundred bytes
that nests references to reach billions is refused before anything is built."""

_MARK = -1  # the symbolic stack's mark
_UNKNOWN = object()  # the value of a symbolic node that is not a small constant
_REFUSED_OPS = frozenset({"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID",
                          "NEXT_BUFFER", "READONLY_BUFFER"})
_MUTATING_OPS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_DTYPE_CODE = re.compile(r"[<>|=]?[biuf][1248]")  # numeric dtypes only (no object, string or void)


class CIFAR10SParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="cifar-10-batches-py folder, or a Hugging Face dataset (Hub id, parquet or save_to_disk folder)")
    skew_ratio: float = Field(0.95, ge=0.5, le=1.0, description="fraction of grayscale images in even classes (odd: 1 - this)")
    val_per_class: int = Field(100, ge=1, description="last test images of each class that form the val split")
    image_column: str = Field("img", description="image column of a Hugging Face dataset")
    label_column: str = Field("label", description="label column of a Hugging Face dataset")
    augment: bool = Field(True, description="random crop (padding 4) and horizontal flip in training")
    seed: int = 0


class _BatchUnpickler(pickle.Unpickler):
    """Accepts only what CIFAR's python batches hold: dicts, lists, strings and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


class _Refused(Exception):
    """A pickle that is not a CIFAR batch, or exceeds a bound (the message says which)."""


def check_batch_pickle(data: bytes) -> None:
    """Walk the opcodes of ``data`` without building anything, on a symbolic stack of nodes; raise
    :class:`_Refused` for an opcode or call a CIFAR batch does not hold, or past a bound
    (:data:`MAX_PICKLE_OPCODES`, :data:`MAX_PICKLE_MEMO`, :data:`MAX_PICKLE_ELEMENTS`)."""
    sizes: list[int] = []  # own elements of each node: characters of a string, 1 otherwise
    children: list[list[int]] = []  # nodes each node holds (containers, call arguments, set state)
    values: list = []  # small constants (ints, short strings, tuples of them, globals); _UNKNOWN otherwise
    kinds: list[str] = []
    stack: list[int] = []
    memo: dict[int, int] = {}

    def new(kind: str, size: int = 1, held: list[int] | None = None, value=_UNKNOWN) -> int:
        sizes.append(size)
        children.append(held or [])
        values.append(value)
        kinds.append(kind)
        return len(sizes) - 1

    def pop_to_mark() -> list[int]:
        if _MARK not in stack:
            raise _Refused("malformed pickle: no mark on the stack")
        at = len(stack) - 1 - stack[::-1].index(_MARK)
        items = stack[at + 1:]
        del stack[at:]
        return items

    def pop() -> int:
        if not stack or stack[-1] == _MARK:
            raise _Refused("malformed pickle: stack underflow")
        return stack.pop()

    def check_call(callable_: int, args: int) -> str:
        """The kind of the result of a REDUCE, or _Refused for a call a batch does not make."""
        target, arguments = values[callable_], values[args]
        arity = children[args] if kinds[args] == "tuple" else None
        if target in _RECONSTRUCT:
            if isinstance(arguments, tuple) and len(arguments) == 3 and arguments[0] == ("numpy", "ndarray") \
                    and arguments[1] == (0,) and arguments[2] in ("b", b"b"):
                return "ndarray"
            raise _Refused("numpy _reconstruct with arguments other than (ndarray, (0,), 'b')")
        if target == ("numpy", "dtype"):
            if isinstance(arguments, tuple) and len(arguments) == 3 and isinstance(arguments[0], str) \
                    and _DTYPE_CODE.fullmatch(arguments[0]) and arguments[1] in (0, 1) and arguments[2] in (0, 1):
                return "dtype"
            raise _Refused(f"numpy.dtype{'' if arguments is _UNKNOWN else arguments!r:.60}: not a numeric dtype")
        if target == ("_codecs", "encode"):
            if arity is not None and len(arity) == 2 and kinds[arity[0]] == "str" and values[arity[1]] in ("latin1", "latin-1"):
                return "bytes"
            raise _Refused("_codecs.encode other than (str, 'latin1')")
        named = isinstance(target, tuple) and len(target) == 2 and all(isinstance(t, str) for t in target)
        raise _Refused(f"refusing a call of {'.'.join(target) if named else 'an object'}: not part of a CIFAR batch")

    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data), start=1):
            if count > MAX_PICKLE_OPCODES:
                raise _Refused(f"more than {MAX_PICKLE_OPCODES} opcodes (the bound MAX_PICKLE_OPCODES)")
            name = opcode.name
            if name in _REFUSED_OPS:
                raise _Refused(f"opcode {name} is not part of a CIFAR batch")
            if name in ("PROTO", "FRAME", "STOP"):
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(memo) if name == "MEMOIZE" else int(arg)
                if index >= MAX_PICKLE_MEMO or (index not in memo and len(memo) >= MAX_PICKLE_MEMO):
                    raise _Refused(f"memo index {index} reaches the bound of {MAX_PICKLE_MEMO} memo entries "
                                   f"(MAX_PICKLE_MEMO)")
                if not stack or stack[-1] == _MARK:
                    raise _Refused("malformed pickle: memo put on an empty stack")
                memo[index] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if int(arg) not in memo:
                    raise _Refused(f"malformed pickle: memo index {arg} was never set")
                stack.append(memo[int(arg)])
            elif name == "MARK":
                stack.append(_MARK)
            elif name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_to_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack and stack[-1] != _MARK else pop())
            elif name in _MUTATING_OPS:
                if name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                    items = pop_to_mark()
                else:  # APPEND, BUILD: one item; SETITEM: key and value
                    items = [pop() for _ in range(2 if name == "SETITEM" else 1)][::-1]
                target = pop()
                if name == "BUILD" and kinds[target] not in ("ndarray", "dtype"):
                    raise _Refused("setting the state of an object other than a numpy array or dtype")
                children[target].extend(items)
                stack.append(target)
            elif name == "GLOBAL":
                module, _, attribute = str(arg).partition(" ")
                stack.append(new("global", value=(module, attribute)))
            elif name == "STACK_GLOBAL":
                attribute, module = pop(), pop()
                stack.append(new("global", value=(values[module], values[attribute])))
            elif name == "REDUCE":
                args, callable_ = pop(), pop()
                kind, value = check_call(callable_, args), _UNKNOWN
                if kind == "bytes" and isinstance(values[children[args][0]], str):  # a short encode("b", "latin1")
                    value = values[children[args][0]].encode("latin-1", errors="replace")
                stack.append(new(kind, held=[callable_, args], value=value))
            else:  # constants, and containers built from the stack (LIST, DICT, TUPLE, FROZENSET: [mark, slice])
                before = opcode.stack_before
                held = pop_to_mark() if pickletools.markobject in before else [pop() for _ in before][::-1]
                kind = opcode.stack_after[0].name if opcode.stack_after else "any"
                if isinstance(arg, (str, bytes, bytearray)):
                    size, value = max(1, len(arg)), (arg if isinstance(arg, (str, bytes)) and len(arg) <= 64 else _UNKNOWN)
                    kind = "str" if isinstance(arg, str) else "bytes"
                else:
                    size, value = 1, arg if isinstance(arg, (int, float)) or arg is None else _UNKNOWN
                if name == "NONE":
                    value = None
                elif name in ("NEWTRUE", "NEWFALSE"):
                    value = name == "NEWTRUE"
                elif kind == "tuple":
                    value = tuple(values[h] for h in held)
                    value = _UNKNOWN if any(v is _UNKNOWN for v in value) else value
                stack.append(new(kind, size, held, value))
    except _Refused:
        raise
    except Exception as exc:  # pickletools raises ValueError for an unknown opcode or a truncated argument
        raise _Refused(f"malformed pickle: {type(exc).__name__}: {one_line(exc)}") from None
    # the elements a traversal of the result meets, with repeats, saturating past the bound
    limit = MAX_PICKLE_ELEMENTS
    total = [0] * len(sizes)
    state = [0] * len(sizes)  # 0 new, 1 on the path, 2 done
    for root in range(len(sizes)):
        if state[root]:
            continue
        path = [(root, iter(children[root]))]
        state[root] = 1
        while path:
            node, pending = path[-1]
            child = next(pending, None)
            if child is None:
                path.pop()
                state[node] = 2
                total[node] = min(limit + 1, sizes[node] + sum(total[c] for c in children[node]))
                if total[node] > limit:
                    raise _Refused(f"it would build more than {limit} elements (the bound MAX_PICKLE_ELEMENTS)")
            elif state[child] == 1:
                raise _Refused("a container that holds itself, not part of a CIFAR batch")
            elif state[child] == 0:
                state[child] = 1
                path.append((child, iter(children[child])))


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3, 32, 32) uint8, labels (N,))`` of one python batch file (at most
    :data:`~fair_data.images.MAX_FILE_BYTES`, its pickle checked by :func:`check_batch_pickle`)."""
    if not path.exists():
        raise FairError(f"data.params.root: CIFAR batch not found: {path}")
    data = read_bytes(path, "CIFAR batch", MAX_FILE_BYTES)
    try:
        check_batch_pickle(data)
    except _Refused as exc:
        raise FairError(f"{path}: not a CIFAR-10 python batch: {exc}") from None
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError, TypeError, OverflowError,
            IndexError, MemoryError, RecursionError) as exc:
        raise FairError(f"{path}: not a CIFAR-10 python batch: {type(exc).__name__}: {one_line(exc)}") from None
    if len(images) != len(labels):
        raise FairError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


class CIFAR10S(DatasetBuilder):
    """CIFAR-10 with the colour/grayscale skew of CIFAR-10S."""

    Params = CIFAR10SParams
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    default_target = "label"
    default_sensitive = ("color",)
    description = "CIFAR-10S (python batches or the Hub parquet): even classes mostly grayscale in training"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(32, *CIFAR_STATS)

    def train_transform(self):
        if not self.params.augment:
            return self.eval_transform()
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), self.preprocessing().normalize])

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        root = Path(self.params.root)
        if root.is_dir() and any((root / name).exists() for name in (*TRAIN_BATCHES, "test_batch")):
            parts = [read_batch(root / name) for name in (TRAIN_BATCHES if train else ("test_batch",))]
            images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        else:
            split = "train" if train else "test"
            dataset = load_split(self.params.root, split, field="data.params.root")
            p = self.params
            require_columns(dataset, [p.image_column, p.label_column], p.root)
            images = hub_pixels(dataset, p.image_column, f"{p.root}:{split}")
            try:
                labels = np.asarray(dataset[p.label_column], dtype=np.int64)
            except (ValueError, TypeError, OverflowError) as exc:
                raise FairError(f"data.params.label_column: {p.label_column!r} of {p.root} is not integer labels: "
                                f"{one_line(exc)}") from None
        if not len(labels) or len(images) != len(labels):
            raise FairError(f"data.params.root: {root} is not CIFAR-10 ({len(images)} images, {len(labels)} labels)")
        if images.shape[1:] != (3, 32, 32) or labels.min() < 0 or labels.max() >= len(CLASSES):
            raise FairError(f"data.params.root: {root} is not CIFAR-10 (images {images.shape[1:]}, labels "
                            f"{labels.min()}..{labels.max()})")
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)

    def read_split(self, split: str) -> SplitData:
        p = self.params
        images, labels = self._read(split == "train")
        if split == "train":
            generator = torch.Generator().manual_seed(p.seed)
            grayscale = torch.zeros(len(labels), dtype=torch.long)
            for c in range(len(CLASSES)):
                rows = torch.nonzero(labels == c).flatten()
                share = p.skew_ratio if c % 2 == 0 else 1.0 - p.skew_ratio
                chosen = rows[torch.randperm(rows.numel(), generator=generator)[:round(share * rows.numel())]]
                grayscale[chosen] = 1
            rows = torch.arange(len(labels))
        else:
            picked = []
            for c in range(len(CLASSES)):
                rows = torch.nonzero(labels == c).flatten()
                if rows.numel() <= p.val_per_class:
                    raise FairError(f"data.params.val_per_class: {p.val_per_class} leaves no test image of class {CLASSES[c]!r} "
                                    f"({rows.numel()} in the test batch)")
                picked.append(rows[-p.val_per_class:] if split == "val" else rows[:-p.val_per_class])
            once = torch.cat(picked).sort().values
            rows = torch.cat([once, once])
            grayscale = torch.cat([torch.zeros(len(once)), torch.ones(len(once))]).long()
        return SplitData(
            images=SkewedImages(images, rows, grayscale),
            attributes={"label": labels[rows], "color": grayscale},
            values={"label": CLASSES, "color": COLOR_VALUES},
        )


def hub_pixels(dataset, column: str, where: str) -> np.ndarray:
    """The images of ``column`` as uint8 ``(N, 3, 32, 32)``, each decoded from its undecoded bytes
    with the pixel bound checked on its header first (:func:`~fair_data.images.open_image`)."""
    import datasets
    from PIL import Image

    if isinstance(dataset.features[column], datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    images = []
    for i, value in enumerate(dataset[column]):
        at = f"{where}[{i}]"
        if isinstance(value, dict):  # an undecoded Image: embedded bytes or a file path
            image = open_image(io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path"), at)
        elif isinstance(value, Image.Image):
            check_pixels(value, at)
            image = value
        else:
            raise FairError(f"data.params.image_column: {at} is a {type(value).__name__}, not an image")
        with image:
            if image.size != (32, 32):
                raise FairError(f"data.params.root: {at} is {image.width}x{image.height}, not a 32x32 CIFAR-10 image")
            try:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
            except Exception as exc:  # PIL's decoders raise OSError, ValueError, ... on corrupt data
                raise FairError(f"corrupt image {at}: {one_line(exc)}") from None
    if not images:
        raise FairError(f"data.params.root: no images in {where}")
    return np.stack(images).transpose(0, 3, 1, 2)


class SkewedImages:
    """``images[i]``: the uint8 image ``pixels[rows[i]]`` as floats in [0, 1], in grayscale when
    ``grayscale[i]`` (luma copied to three channels)."""

    def __init__(self, pixels: Tensor, rows: Tensor, grayscale: Tensor):
        self.pixels, self.rows, self.grayscale = pixels, rows, grayscale

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        image = self.pixels[self.rows[i]].float() / 255.0
        if self.grayscale[i]:
            image = to_grayscale(image).contiguous()
        return image
