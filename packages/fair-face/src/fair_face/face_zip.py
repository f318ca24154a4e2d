"""MixFairFace's training zip (Wang et al., "MixFairFace: Towards Ultimate Fairness via MixFair
Adapter in Face Recognition", AAAI 2023; code: fuenwang/MixFairFace), and the folder-or-zip file
reader the face datasets share (:func:`open_files`).

The layout (``root`` is the zip, or the folder it was made of)::

    TrainingData.zip
        data/index.txt          # one line per image: "name attribute label exist"
        data/img/0000000.jpg    # the image of line 1
        data/img/0000001.jpg    # the image of line 2, ...

The columns of ``index.txt``, as the original ``BalancedFaceDataset`` reads them (it splits each
line on whitespace):

* ``name``: free text; the original README calls it "a comment text (doesn't matter)" (with
  BUPT-Balancedface it is ``<race>/<identity>/<file>``). Here it is every field before the last
  three, so a name may hold spaces; it is not used.
* ``attribute``: the race, an index into (African, Asian, Caucasian, Indian).
* ``label``: the identity, ``0 .. C-1``; the identity head has ``C = max(label) + 1`` classes, as
  in the original.
* ``exist``: whether the image exists (the README: "you can just give 1 here"). The original reads
  it and never uses it, so a line marked 0 still makes it read its image; here lines marked 0 are
  left out (their image need not exist). With every line marked 1 both agree.

The image of line ``k`` (1-based, counting every line of the file) is ``data/img/{k-1:07d}.jpg``,
as the original's ``'data/img/%.7d.jpg' % idx`` over ``enumerate(lines)``.

The index is read once per builder, checked line by line (one :class:`~fair_core.FairError` line
naming ``index.txt`` and the line), and every image it names must be in the archive; images are
decoded lazily, in the DataLoader workers. ``in_memory`` reads the whole zip into memory first, as
the original does (bounded by ``fair_data.images.MAX_ZIP_IN_MEMORY_BYTES``); otherwise each worker
reads members from disk. Inputs are in [0, 1] without mean/std normalisation by default, as
MixFairFace trains (``normalization: insightface`` gives insightface's ``(x - 0.5) / 0.5``); the
training transform mirrors each image with probability 1/2, the original's only augmentation.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData
from fair_data.images import ImageFiles, ZipImages, ZipReader, decode_text, quote, read_bytes, read_member

RACES = ("African", "Asian", "Caucasian", "Indian")  # MixFairFace's race_lst: attribute i is RACES[i]
INDEX = "data/index.txt"
IMAGE_FOLDER = "data/img/"

Normalization = Literal["mixfairface", "insightface"]
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "mixfairface": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # inputs stay in [0, 1], as MixFairFace
    "insightface": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # (x - 0.5) / 0.5 in [-1, 1], as insightface's arcface_torch
}
NORMALIZATION_HELP = "mixfairface: inputs in [0, 1], no mean/std (MixFairFace); insightface: (x - 0.5) / 0.5"


# ---------------------------------------------------------------- files: a folder or a zip
class FolderFiles:
    """The files of a dataset folder, by their POSIX names relative to it."""

    def __init__(self, folder: Path):
        self.folder = folder

    def where(self, name: str) -> str:
        return str(self.folder / name)

    def names(self, under: str = "") -> list[str]:
        """Every file below the folder ``under`` (``""``: all), recursively, sorted."""
        base = self.folder / under
        found = []
        for directory, _, files in os.walk(base):
            relative = Path(directory).relative_to(self.folder).as_posix()
            prefix = "" if relative == "." else f"{relative}/"
            found.extend(prefix + name for name in files)
        return sorted(found)

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def read_text(self, name: str, what: str) -> str:
        """The UTF-8 text of ``name`` (at most ``fair_data.images.MAX_FILE_BYTES``), errors naming it."""
        return decode_text(read_bytes(self.folder / name, what), self.where(name))

    def images(self, names: Sequence[str], size: int) -> ImageFiles:
        """The images ``names``, decoded lazily as ``(3, size, size)`` tensors in [0, 1]."""
        return ImageFiles([self.folder / name for name in names], size)


class ZipFiles(ZipReader):
    """The files of a zip, by member name, read from disk or (``in_memory``) from its bytes.

    Each process opens its own handle; an open archive is never pickled nor shared after a fork."""

    def __init__(self, path: Path, in_memory: bool):
        self.members = frozenset(m for m in self._read_archive(path, in_memory) if not m.endswith("/"))

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if name else str(self.path)

    def names(self, under: str = "") -> list[str]:
        """Every member below the folder ``under`` (``""``: all), sorted."""
        prefix = f"{under.rstrip('/')}/" if under else ""
        return sorted(m for m in self.members if m.startswith(prefix))

    def exists(self, name: str) -> bool:
        return name in self.members

    def read_text(self, name: str, what: str) -> str:
        """The UTF-8 text of member ``name``, checked first (size, compression ratio, encryption:
        :func:`fair_data.images.read_member`); errors name ``archive:member``."""
        return decode_text(read_member(self._open(), name, self.path, missing=f"{what} not found"), self.where(name))

    def images(self, names: Sequence[str], size: int) -> ZipImages:
        """The members ``names``, decoded lazily (from the in-memory copy when there is one)."""
        return ZipImages(self.path, names, size, self.data)


Files = FolderFiles | ZipFiles


def open_files(root: Path, in_memory: bool) -> Files:
    """``root`` as a folder or a zip (whole in memory with ``in_memory``); errors name the field."""
    if root.is_dir():
        if in_memory:
            raise FairError(f"data.params.in_memory: {root} is a folder; in_memory reads a zip into memory (set it to false)")
        return FolderFiles(root)
    try:
        mode = os.stat(root).st_mode
    except OSError:
        raise FairError(f"data.params.root: not found: {root} (expected a folder or a zip)") from None
    if not stat.S_ISREG(mode):
        raise FairError(f"data.params.root: {root} is neither a folder nor a regular file (a zip)")
    return ZipFiles(root, in_memory)


class FlipThenNormalize:
    """Training transform: mirror the image with probability 1/2 (torch's global generator, which
    the runner seeds per epoch and worker), then normalise. A class, so workers can unpickle it."""

    def __init__(self, normalize: Callable[[Tensor], Tensor]):
        self.normalize = normalize

    def __call__(self, image: Tensor) -> Tensor:
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return self.normalize(image)


# ---------------------------------------------------------------- the index
@dataclass(frozen=True)
class FaceIndex:
    """The kept lines of ``index.txt``: ``line[i]`` (0-based, the image's number), ``race[i]``
    (into :data:`RACES`), ``identity[i]`` (into ``num_identities`` labels)."""

    line: Tensor
    race: Tensor
    identity: Tensor
    num_identities: int


def image_name(line: int) -> str:
    """The image member of the 0-based line ``line`` of ``index.txt``."""
    return f"{IMAGE_FOLDER}{line:07d}.jpg"


def _integer(field: str, column: str, where: str, number: int, line: str) -> int:
    if not field.isascii() or not field.lstrip("-").isdigit():
        raise FairError(f"{where}: line {number}: {column} {quote(field)} is not an integer "
                        f"(expected 'name attribute label exist'): {quote(line.strip())}")
    return int(field)


def parse_index(text: str, where: str) -> FaceIndex:
    """``index.txt``'s lines ``name attribute label exist``; blank lines are skipped (they still
    count for image numbers); lines with ``exist`` 0 are left out. A malformed line is one
    :class:`FairError` line naming ``where`` and the line."""
    lines, races, identities = [], [], []
    allowed_races = ", ".join(f"{i} ({race})" for i, race in enumerate(RACES))
    all_lines = text.splitlines()
    for number, line in enumerate(all_lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 4:
            raise FairError(f"{where}: line {number}: {len(fields)} fields, expected 'name attribute label exist': "
                            f"{quote(line.strip())}")
        race, label, exist = (_integer(f, c, where, number, line) for f, c in zip(fields[-3:], ("attribute", "label", "exist"),
                                                                                  strict=True))
        if not 0 <= race < len(RACES):
            raise FairError(f"{where}: line {number}: race attribute {race} out of range; allowed: {allowed_races}")
        if not 0 <= label < len(all_lines):
            raise FairError(f"{where}: line {number}: identity label {label} out of range: labels are identity indices "
                            f"0 .. C-1, fewer than the {len(all_lines)} lines of the file")
        if exist not in (0, 1):
            raise FairError(f"{where}: line {number}: exist {exist}; allowed: 1 (the image exists) or 0 (left out)")
        if exist:
            lines.append(number - 1)
            races.append(race)
            identities.append(label)
    if not lines:
        raise FairError(f"{where}: no images (no line marked exist 1)")
    return FaceIndex(torch.tensor(lines), torch.tensor(races), torch.tensor(identities), max(identities) + 1)


# ---------------------------------------------------------------- the dataset
class FaceZipParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description="MixFairFace's training zip (data/index.txt, data/img/0000000.jpg ...) or the folder it holds")
    in_memory: bool = Field(False, description="read the whole zip into memory once, as MixFairFace does; workers decode "
                                               "from memory (at most fair_data.images.MAX_ZIP_IN_MEMORY_BYTES)")
    image_size: int = Field(112, ge=8, description="side of the (square) network input")
    normalization: Normalization = Field("mixfairface", description=NORMALIZATION_HELP)
    flip: bool = Field(True, description="training: mirror each image with probability 1/2 (MixFairFace's augmentation)")
    races: list[Literal["African", "Asian", "Caucasian", "Indian"]] | None = Field(
        None, min_length=1, description="keep only these races (the original's selected_races); all when omitted")


class FaceZip(DatasetBuilder):
    """MixFairFace's training zip: identities (``identity``) and race (``race``), verification task."""

    Params = FaceZipParams
    splits: ClassVar[tuple[str, ...]] = ("train",)
    default_target = "identity"
    default_sensitive = ("race",)
    tasks: ClassVar[tuple[str, ...]] = ("verification",)
    description = "MixFairFace's training zip (data/index.txt + data/img/): identity, race (verification)"

    @cached_property
    def files(self) -> Files:
        """The zip or folder, opened once (a zip in memory is read once)."""
        return open_files(self.params.root, self.params.in_memory)

    @cached_property
    def index(self) -> FaceIndex:
        """``data/index.txt``, read and checked once."""
        files = self.files
        return parse_index(files.read_text(INDEX, "index file"), files.where(INDEX))

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, *NORMALIZATIONS[self.params.normalization])

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        normalize = self.preprocessing().normalize
        return FlipThenNormalize(normalize) if self.params.flip else normalize

    def read_split(self, split: str) -> SplitData:
        files, index = self.files, self.index
        keep = torch.ones_like(index.line, dtype=torch.bool)
        race_names = RACES
        if self.params.races is not None:
            race_names = tuple(r for r in RACES if r in self.params.races)
            keep = torch.isin(index.race, torch.tensor([RACES.index(r) for r in race_names]))
            if not keep.any():
                raise FairError(f"data.params.races: no image of {', '.join(race_names)} in {files.where(INDEX)}")
        lines = index.line[keep]
        present = set(files.names(IMAGE_FOLDER))
        missing = [k for k in lines.tolist() if image_name(k) not in present]
        if missing:
            raise FairError(f"{files.where(INDEX)}: line {missing[0] + 1}: image not found: {files.where(image_name(missing[0]))} "
                            f"({len(missing)} of {lines.numel()} images missing)")
        recode = torch.full((len(RACES),), -1, dtype=torch.long)
        recode[[RACES.index(r) for r in race_names]] = torch.arange(len(race_names))
        return SplitData(
            images=files.images([image_name(k) for k in lines.tolist()], self.params.image_size),
            attributes={"identity": index.identity[keep], "race": recode[index.race[keep]]},
            values={"identity": tuple(str(i) for i in range(index.num_identities)), "race": race_names},
        )
