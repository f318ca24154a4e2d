"""RFW, Racial Faces in the Wild (Wang, Deng, Hu, Tao, Huang, "Racial Faces in-the-Wild: Reducing
Racial Bias by Information Maximization Adaptation Network", ICCV 2019): a test set of four races
(African, Asian, Caucasian, Indian), about 3,000 identities and 10,000 images each.

The RFW test layout (``root`` is the folder, or a zip of it; the zip, or the folder, may hold the
layout under one top folder such as ``test/`` or MixFairFace's ``data/``, which is detected)::

    txts/<Race>/<Race>_people.txt   # "<identity> <n_images>" per line (tab-separated in RFW)
    txts/<Race>/<Race>_pairs.txt    # "<id> <n1> <n2>" (a positive pair) or "<id1> <n1> <id2> <n2>"
                                    # (a negative pair); 10 folds of 300 positive then 300 negative pairs
    data/<Race>/<identity>/<identity>_0001.jpg ...

* Races are the ``txts/<Race>/<Race>_people.txt`` files present (``races`` keeps some of them); the
  race of an image is the folder its identity is in, never the order of files in a zip.
* The identities of a race are its people file's lines; an identity's images are the image files
  of its folder ``data/<Race>/<identity>/``, matched by that exact name (never by substring). A
  people line that lists more images than its folder holds is an error naming the file and line;
  files of folders no people file lists are not read.
* RFW names a few identities (Freebase ids) in two races, so an identity is its race and name:
  ``identity`` codes index the sorted names ``<Race>/<identity>``, unique across races.
* Pairs (``SplitData.pairs``, rows ``(row_a, row_b, same)`` over all kept races, in file order):
  image number ``n`` of ``<id>`` is ``data/<Race>/<id>/<id>_{n:04d}.<ext>``. A pair naming an image
  that is not in the split is an error naming the pairs file and line. An LFW-style header line
  ``<folds> <pairs>`` is skipped. The pairs files are optional (MixFairFace's instance-level
  protocol needs only the people files), but all kept races or none must have one.

Defects of MixFairFace's loader (``Datasets/RFWDataset.py``) this one does not have: it gave an
identity every image whose path *contains* its name (an identity whose name is a prefix of another
takes the other's images too), and it paired people files in zip order with race names in sorted
order, so when the two orders differed identities silently got no images and wrong races.

Converted ``.bin`` pairs (RFW's ``<Race>_test.bin``, turned into images by ``fair face
convert-bin``): a folder (or zip) with ``pairs.csv`` at its top, header ``race,image_a,image_b,same``,
image paths relative to it, ``same`` 1/0 (or true/false). Its images are those the csv names, each
with the race of its rows. RFW's ``.bin`` files carry no identity, so each connected component of
the positive pairs gets one *pseudo-identity* (union-find), named by its first image path: images
of one person in different positive pairs stay apart, so only the pair protocol (``rfw_val``) is
meaningful on this layout, not the instance-level one.

Images are decoded lazily (in DataLoader workers): shorter side resized to ``image_size``, then
centre-cropped (fair_data's reader; MixFairFace resizes straight to 112 x 112, the same for square
images). Inputs are in [0, 1] without mean/std, as MixFairFace evaluates (``normalization:
insightface`` gives insightface's ``(x - 0.5) / 0.5``). ``in_memory`` reads a zip into memory
once, as MixFairFace does. RFW is a test set: its one split is ``test``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from fair_core import DatasetBuilder, FairError, Preprocessing, SplitData
from fair_data.images import IMAGE_SUFFIXES, one_line, quote

from .face_zip import NORMALIZATION_HELP, NORMALIZATIONS, Files, Normalization, open_files

PEOPLE_SUFFIX, PAIRS_SUFFIX = "_people.txt", "_pairs.txt"
CONVERTED_PAIRS = "pairs.csv"
CONVERTED_COLUMNS = ("race", "image_a", "image_b", "same")
SAME_VALUES = {"1": 1, "0": 0, "true": 1, "false": 0}


class RFWParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(description="the RFW test folder (txts/, data/) or its zip (a top folder such as test/ is detected), "
                                   "or a folder with pairs.csv written by `fair face convert-bin`")
    in_memory: bool = Field(False, description="read the whole zip into memory once, as MixFairFace does; workers decode "
                                               "from memory (at most fair_data.images.MAX_ZIP_IN_MEMORY_BYTES)")
    image_size: int = Field(112, ge=8, description="side of the (square) network input")
    normalization: Normalization = Field("mixfairface", description=NORMALIZATION_HELP)
    races: list[str] | None = Field(None, min_length=1, description="keep only these races (e.g. [African, Asian]); "
                                                                    "all races present when omitted")


@dataclass
class Identity:
    """One identity of the split: its race, name and image files (relative to ``files``)."""

    race: str
    name: str
    images: list[str]

    @property
    def key(self) -> str:
        return f"{self.race}/{self.name}"


def check_relative(name: str, where: str) -> str:
    """``name`` if it is a relative POSIX path that stays inside the root."""
    if not name or name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise FairError(f"{where}: image path {quote(name)} is not a relative path inside the root (no '/' start, '\\' or '..')")
    return name


# ---------------------------------------------------------------- the RFW test layout
def find_layout(files: Files) -> tuple[str, dict[str, str]]:
    """The top folder of the layout (``""``, ``"test/"``, ...) and ``{race: people file}``."""
    found: dict[str, dict[str, str]] = {}
    for name in files.names():
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == "txts" and parts[-1] == f"{parts[-2]}{PEOPLE_SUFFIX}":
            top = "".join(f"{p}/" for p in parts[:-3])
            found.setdefault(top, {})[parts[-2]] = name
    if not found:
        raise FairError(f"data.params.root: no RFW layout in {files.where('')} (expected txts/<Race>/<Race>_people.txt, "
                        f"data/<Race>/<identity>/*.jpg, or pairs.csv from `fair face convert-bin`)")
    if len(found) > 1:
        tops = ", ".join(repr(top or "./") for top in sorted(found))
        raise FairError(f"data.params.root: several RFW layouts in {files.where('')} (under {tops}); point root at one")
    top = next(iter(found))
    return top, dict(sorted(found[top].items()))


def select_races(available: Sequence[str], chosen: Sequence[str] | None, where: str) -> tuple[str, ...]:
    """The races to keep, in sorted order; an unknown race is one line naming the available ones."""
    if chosen is None:
        return tuple(sorted(available))
    unknown = [race for race in chosen if race not in available]
    if unknown:
        raise FairError(f"data.params.races: unknown race {unknown[0]!r} in {where}; available: {', '.join(sorted(available))}")
    return tuple(sorted(set(chosen)))


def index_images(files: Files, top: str) -> dict[tuple[str, str], list[str]]:
    """``{(race, identity): [image names]}`` of every ``data/<Race>/<identity>/<image>``."""
    start = f"{top}data/"
    folders: dict[tuple[str, str], list[str]] = {}
    for name in files.names(start):
        parts = name[len(start):].split("/")
        if len(parts) == 3 and parts[2].lower().endswith(IMAGE_SUFFIXES):
            folders.setdefault((parts[0], parts[1]), []).append(name)
    return folders


def read_people(files: Files, people_file: str, race: str, folders: dict[tuple[str, str], list[str]],
                top: str) -> list[Identity]:
    """The identities of ``<Race>_people.txt`` with the images of their folders."""
    where = files.where(people_file)
    identities, seen = [], {}
    for number, line in enumerate(files.read_text(people_file, "people file").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isascii() or not fields[1].isdigit() or int(fields[1]) < 1:
            raise FairError(f"{where}: line {number}: expected '<identity> <number of images>', got {quote(line.strip())}")
        name, listed = fields[0], int(fields[1])
        if name in seen:
            raise FairError(f"{where}: line {number}: identity {quote(name)} is listed again (first on line {seen[name]})")
        seen[name] = number
        images = folders.get((race, name), [])
        if len(images) < listed:
            raise FairError(f"{where}: line {number}: lists {listed} images of {name}, but "
                            f"{files.where(f'{top}data/{race}/{name}')}/ holds {len(images)}")
        identities.append(Identity(race, name, images))
    return identities


def image_stem(name: str) -> str:
    """The file name of ``name`` without folder and extension."""
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def read_pairs(files: Files, pairs_file: str, race: str, rows: dict[tuple[str, str, str], int]) -> list[tuple[int, int, int]]:
    """``(row_a, row_b, same)`` of each line of ``<Race>_pairs.txt``."""
    where = files.where(pairs_file)
    pairs = []

    def row(identity: str, number: str, line_number: int, line: str) -> int:
        if not number.isascii() or not number.isdigit():
            raise FairError(f"{where}: line {line_number}: image number {quote(number)} is not a number: {quote(line.strip())}")
        stem = f"{identity}_{int(number):04d}"
        found = rows.get((race, identity, stem))
        if found is None:
            raise FairError(f"{where}: line {line_number}: names image {stem} of {race}/{identity}, which is not in the split "
                            f"(no such image in data/{race}/{identity}/, or the identity is not in {race}{PEOPLE_SUFFIX})")
        return found

    for number, line in enumerate(files.read_text(pairs_file, "pairs file").splitlines(), start=1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) == 2 and all(f.isascii() and f.isdigit() for f in fields)):
            continue  # blank, or an LFW-style "<folds> <pairs per fold>" header
        if len(fields) == 3:
            pairs.append((row(fields[0], fields[1], number, line), row(fields[0], fields[2], number, line), 1))
        elif len(fields) == 4:
            if fields[0] == fields[2]:
                raise FairError(f"{where}: line {number}: a negative pair names one identity twice: {quote(line.strip())}")
            pairs.append((row(fields[0], fields[1], number, line), row(fields[2], fields[3], number, line), 0))
        else:
            raise FairError(f"{where}: line {number}: expected '<id> <n1> <n2>' (same identity) or '<id1> <n1> <id2> <n2>' "
                            f"(different identities), got {len(fields)} fields: {quote(line.strip())}")
    return pairs


def read_rfw(files: Files, chosen: Sequence[str] | None) -> tuple[list[str], dict, dict, list[tuple[int, int, int]] | None]:
    """Image names, attributes, value names and pairs (``None`` without pairs files) of the RFW test layout."""
    top, people_files = find_layout(files)
    races = select_races(list(people_files), chosen, files.where(f"{top}txts/"))
    folders = index_images(files, top)
    identities = [i for race in races for i in read_people(files, people_files[race], race, folders, top)]
    identities.sort(key=lambda i: i.key)
    names, identity_codes, race_codes = [], [], []
    rows: dict[tuple[str, str, str], int] = {}
    for code, identity in enumerate(identities):
        for image in identity.images:
            rows[(identity.race, identity.name, image_stem(image))] = len(names)
            names.append(image)
            identity_codes.append(code)
            race_codes.append(races.index(identity.race))
    if not names:
        raise FairError(f"data.params.root: no images of {', '.join(races)} in {files.where(f'{top}data/')}")
    pairs_files = {race: f"{top}txts/{race}/{race}{PAIRS_SUFFIX}" for race in races}
    present = [race for race in races if files.exists(pairs_files[race])]
    pairs = None
    if present:
        if len(present) < len(races):
            missing = next(race for race in races if race not in present)
            raise FairError(f"pairs file not found: {files.where(pairs_files[missing])} (the other races have one: "
                            f"every kept race needs its pairs file, or none)")
        pairs = [p for race in races for p in read_pairs(files, pairs_files[race], race, rows)]
    attributes = {"identity": torch.tensor(identity_codes), "race": torch.tensor(race_codes)}
    values = {"identity": tuple(i.key for i in identities), "race": races}
    return names, attributes, values, pairs


# ---------------------------------------------------------------- converted .bin pairs
def find_root(parent: list[int], i: int) -> int:
    """The representative of ``i`` in a union-find forest (path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def read_converted(files: Files, chosen: Sequence[str] | None) -> tuple[list[str], dict, dict, list[tuple[int, int, int]]]:
    """Image names, attributes, value names and pairs of a ``pairs.csv`` folder (pseudo-identities)."""
    where = files.where(CONVERTED_PAIRS)
    reader = csv.reader(io.StringIO(files.read_text(CONVERTED_PAIRS, "pairs file"), newline=""))
    records = []
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CONVERTED_COLUMNS:
            raise FairError(f"{where}: line 1: header {quote(','.join(header or []))}, expected {','.join(CONVERTED_COLUMNS)}")
        for fields in reader:
            number = reader.line_num
            if not fields:
                continue
            if len(fields) != len(CONVERTED_COLUMNS):
                raise FairError(f"{where}: line {number}: {len(fields)} columns, expected {len(CONVERTED_COLUMNS)} "
                                f"({','.join(CONVERTED_COLUMNS)})")
            race, image_a, image_b, same = (f.strip() for f in fields)
            if same.lower() not in SAME_VALUES:
                raise FairError(f"{where}: line {number}: same {quote(same)}; allowed: 1, 0, true, false")
            records.append((number, race, check_relative(image_a, f"{where}: line {number}"),
                            check_relative(image_b, f"{where}: line {number}"), SAME_VALUES[same.lower()]))
    except csv.Error as exc:
        raise FairError(f"{where}: line {reader.line_num + 1}: not a CSV row: {one_line(exc)}") from None
    if not records:
        raise FairError(f"{where}: no pairs")
    races = select_races(sorted({r[1] for r in records}), chosen, where)
    records = [r for r in records if r[1] in races]
    race_of: dict[str, tuple[str, int]] = {}
    for number, race, *images, _ in records:
        for image in images:
            if not files.exists(image):
                raise FairError(f"{where}: line {number}: image not found: {files.where(image)}")
            first = race_of.setdefault(image, (race, number))
            if first[0] != race:
                raise FairError(f"{where}: line {number}: image {image} is {race} here but {first[0]} on line {first[1]}")
    names = sorted(race_of)
    row = {name: i for i, name in enumerate(names)}
    parent = list(range(len(names)))
    for _, _, image_a, image_b, same in records:
        if same:
            a, b = find_root(parent, row[image_a]), find_root(parent, row[image_b])
            parent[max(a, b)] = min(a, b)  # the root is the component's first (smallest) image
    roots = [find_root(parent, i) for i in range(len(names))]
    pseudo = sorted(set(roots))
    code = {root: i for i, root in enumerate(pseudo)}  # names are sorted, so codes follow the names' order
    attributes = {"identity": torch.tensor([code[r] for r in roots]),
                  "race": torch.tensor([races.index(race_of[name][0]) for name in names])}
    values = {"identity": tuple(names[root] for root in pseudo), "race": races}
    pairs = [(row[a], row[b], same) for _, _, a, b, same in records]
    return names, attributes, values, pairs


# ---------------------------------------------------------------- the dataset
class RFW(DatasetBuilder):
    """RFW's test set (identity, race, the pairs of its pairs files), or converted ``.bin`` pairs."""

    Params = RFWParams
    splits: ClassVar[tuple[str, ...]] = ("test",)
    default_target = "identity"
    default_sensitive = ("race",)
    tasks: ClassVar[tuple[str, ...]] = ("verification",)
    description = "RFW test set (txts/ + data/ folder or zip, or converted .bin pairs.csv): identity, race, pairs (verification)"

    @cached_property
    def files(self) -> Files:
        """The folder or zip, opened once (a zip in memory is read once)."""
        return open_files(self.params.root, self.params.in_memory)

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.params.image_size, *NORMALIZATIONS[self.params.normalization])

    def read_split(self, split: str) -> SplitData:
        files = self.files
        read = read_converted if files.exists(CONVERTED_PAIRS) else read_rfw
        names, attributes, values, pairs = read(files, self.params.races)
        return SplitData(
            images=files.images(names, self.params.image_size),
            attributes=attributes,
            values=values,
            pairs=None if pairs is None else torch.tensor(pairs, dtype=torch.long).reshape(-1, 3),
        )
