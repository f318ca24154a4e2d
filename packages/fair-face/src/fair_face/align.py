"""Face alignment: five landmarks mapped onto a template by a least-squares similarity transform,
a box-only fallback, and :func:`align_folder` over a folder of images (``fair face align``).

**Similarity transform** (Umeyama, "Least-squares estimation of transformation parameters between
two point patterns", IEEE TPAMI 13(4), 1991; what insightface's ``face_align.norm_crop`` gets from
scikit-image's ``SimilarityTransform.estimate``). For source points ``x_i`` and destination points
``y_i`` (``n`` points in 2-D) it finds the scale ``c > 0``, rotation ``R`` (``det R = +1``, never a
reflection) and translation ``t`` minimising ``sum_i |y_i - (c R x_i + t)|^2``:

* ``mu_x, mu_y`` the means, ``var_x = mean_i |x_i - mu_x|^2``,
  ``Sigma = (1/n) sum_i (y_i - mu_y)(x_i - mu_x)^T = U D V^T`` (SVD);
* ``S = diag(1, det(U) det(V))`` (flips the weakest axis when the best orthogonal map would reflect);
* ``R = U S V^T``, ``c = trace(D S) / var_x``, ``t = mu_y - c R mu_x``.

**Templates** (landmarks in the order left eye centre, right eye centre, nose tip, left mouth
corner, right mouth corner, "left" meaning the left of the image):

* ``arcface112``: insightface's ArcFace template for 112 x 112 crops. Other sizes follow
  insightface's ``estimate_norm``: a multiple of 112 scales the template by ``size / 112``; a
  multiple of 128 scales it by ``size / 128`` and shifts it right by ``8 * size / 128`` (the 112
  layout centred horizontally in a 128 canvas, not shifted vertically); other sizes are refused,
  as insightface refuses them.
* ``fairface256``: the FairFace-challenge template (CdtQin/FairFace, ECCV 2020 ChaLearn
  FairFaceRec, 3rd place) for 256 x 256 crops, scaled by ``size / 256`` for other sizes.

**Pixel convention.** Landmark coordinates and template points put the *centre* of pixel
``(col, row)`` at ``(x, y) = (col, row)``, as OpenCV's ``warpAffine`` (used by insightface and the
challenge code) and the common 5-point detectors (RetinaFace, MTCNN) do. The warp uses PIL's
``Image.transform`` (affine, bilinear, black outside the image), whose coordinates put pixel
centres at ``+0.5``; :func:`pil_affine_coefficients` converts, so a landmark lands on its template
point to sub-pixel accuracy. :func:`align_folder` turns images upright by their EXIF orientation
first, as OpenCV's ``imread`` does before a detector sees them (so landmarks from such a detector fit).

**Box fallback** (the challenge code's ``crop_transform_with_box``): the box widened by ``margin``
pixels in all (``margin / 2`` on each side; the challenge used 10), clamped to the image, resized to
``size x size``. Box coordinates are pixel *edges* (``left, top, right, bottom`` as in
``image[top:bottom, left:right]``). Differences from the original: the box is given by its edges,
not by its centre and size; the region is resampled at its real-valued edges (the original
truncated them to integers) with PIL's antialiasing bilinear resize.

**Landmarks file**: a UTF-8 CSV whose header decides its columns: ``image`` (the image's path
relative to the source folder, with ``/``), then ``x1,y1,...,x5,y5`` (five landmarks, in the order
above), or ``left,top,right,bottom`` (a box), or both. With both, a row uses its landmarks when its
ten landmark cells are filled, else its box when its four box cells are; a row with all of them
empty has no face (reported for its image). Any other malformation (an unknown column, a
partly filled set, a cell that is not a finite number, a repeated or absolute image name) is one
:class:`~fair_core.FairError` line naming ``file:line``.

**align_folder** walks the source folder recursively for images (``.jpg .jpeg .png .bmp .webp``),
writes each aligned face to the same relative path under the destination (atomically: a
temporary file in the same folder, then a rename), in the format its name says (JPEG at quality
95), and reports what it could not align by name and why (no row in the landmarks file, an
unreadable image, degenerate landmarks, an empty box). Images already in the destination are
skipped unless ``overwrite`` (so an interrupted run resumes). Images are opened with
:func:`fair_data.images.open_image`, which checks the header's pixel count before decoding.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from fair_core import FairError
from fair_core.atomic import atomic_path
from fair_core.spec import validation_message
from fair_core.untrusted import read_bounded
from fair_data.images import IMAGE_SUFFIXES, decode_text, one_line, open_image

TemplateName = Literal["arcface112", "fairface256"]

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])
FAIRFACE_256 = np.array([[87.0, 99.0], [161.0, 99.0], [124.0, 138.0], [97.0, 182.0], [151.0, 182.0]])
TEMPLATES: dict[str, tuple[np.ndarray, int]] = {"arcface112": (ARCFACE_112, 112), "fairface256": (FAIRFACE_256, 256)}
"""Each template's five points (pixel-centre coordinates) and the output size they are given for."""

LANDMARK_COLUMNS = tuple(f"{axis}{i}" for i in range(1, 6) for axis in "xy")
BOX_COLUMNS = ("left", "top", "right", "bottom")

DEFAULT_BOX_MARGIN = 10.0
"""Pixels added to a box's width and height (half on each side), as the FairFace-challenge code."""

MAX_OUTPUT_SIZE = 4096
"""Largest aligned image side: face recognisers take 112 to 256 px crops."""

MAX_LANDMARKS_FILE_BYTES = 256 * 2**20
"""Largest landmarks file read (about 3 million rows of five landmarks)."""

MIN_LANDMARK_SPREAD = 1.0
"""Landmarks whose RMS distance to their centroid is below this many pixels are degenerate (all at one
point): the warp would magnify one pixel to the whole face."""

MIN_LANDMARK_ASPECT = 0.01
"""Landmarks whose spread across their main direction is below this fraction of the spread along it are
degenerate (collinear): a real face's five points span a 2-D shape (the ratio is 0.8 for both templates,
and still about 0.12 for the ArcFace template squeezed sideways to 15 % of its width, a face near profile)."""

JPEG_QUALITY = 95

SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}


# --------------------------------------------------------------------------- geometry
def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The ``(2, 3)`` matrix ``[c R | t]`` of the similarity transform (rotation, uniform scale,
    translation, no reflection) that maps the points ``src`` ``(n, 2)`` onto ``dst`` ``(n, 2)`` with the
    least sum of squared distances (Umeyama 1991; see the module docstring). Points that all
    coincide have no such transform: a :class:`FairError`."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise FairError(f"umeyama: expected two arrays of the same shape (n, 2), n >= 2; got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise FairError("umeyama: the points must be finite numbers")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    src_variance = (src_centred**2).sum(1).mean()
    if src_variance <= 0:
        raise FairError("umeyama: the source points all coincide; no similarity transform maps them")
    covariance = dst_centred.T @ src_centred / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (singular * signs).sum() / src_variance
    translation = dst_mean - scale * rotation @ src_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def output_size(template: TemplateName, size: int | None = None) -> int:
    """The aligned image's side: ``size``, or the template's own size when ``None``."""
    if template not in TEMPLATES:
        raise FairError(f"template: {template!r} is not a template; expected one of {', '.join(TEMPLATES)}")
    native = TEMPLATES[template][1]
    if size is None:
        return native
    if not 1 <= size <= MAX_OUTPUT_SIZE:
        raise FairError(f"size: {size} is outside 1..{MAX_OUTPUT_SIZE}")
    if template == "arcface112" and size % 112 and size % 128:
        raise FairError(f"size: the arcface112 template is laid out for multiples of 112 or 128 pixels "
                        f"(insightface's estimate_norm), got {size}")
    return size


def template_points(template: TemplateName, size: int | None = None) -> np.ndarray:
    """The template's five points ``(5, 2)`` for a ``size x size`` output (see the module docstring)."""
    size = output_size(template, size)
    points, native = TEMPLATES[template]
    if template == "arcface112" and size % 112:  # insightface's 128 layout: 112 centred horizontally
        ratio = size / 128
        return points * ratio + np.array([8.0 * ratio, 0.0])
    return points * (size / native)


def landmark_problem(landmarks: np.ndarray) -> str | None:
    """Why ``landmarks`` ``(5, 2)`` cannot be aligned (not finite, all at one point, collinear), or ``None``."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        return f"expected 5 landmarks (x, y), got an array of shape {points.shape}"
    if not np.isfinite(points).all():
        return "landmarks are not finite numbers"
    centred = points - points.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False) / math.sqrt(len(points))
    if math.hypot(*singular) < MIN_LANDMARK_SPREAD:
        return f"degenerate landmarks: all 5 points within {MIN_LANDMARK_SPREAD:g} px of their centre"
    if singular[1] < MIN_LANDMARK_ASPECT * singular[0]:
        return "degenerate landmarks: the 5 points are collinear"
    return None


def pil_affine_coefficients(matrix: np.ndarray) -> tuple[float, ...]:
    """PIL's ``Image.transform(AFFINE)`` data for the forward map ``matrix`` ``[A | t]`` (input pixel
    centre coordinates to output ones): PIL samples the input at ``B p + c`` for each output point
    ``p`` with pixel centres at ``+0.5``, so ``B = A^-1`` and ``c = -B t + 0.5 - B (0.5, 0.5)``."""
    linear, translation = matrix[:, :2], matrix[:, 2]
    inverse = np.linalg.inv(linear)
    offset = -inverse @ translation + 0.5 - inverse @ np.array([0.5, 0.5])
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def _working_mode(image: Image.Image) -> Image.Image:
    """Grayscale stays grayscale; every other mode becomes RGB (what face recognisers read)."""
    return image if image.mode in ("L", "RGB") else image.convert("RGB")


def align_face(image: Image.Image, landmarks: np.ndarray | Sequence[Sequence[float]], template: TemplateName = "arcface112",
               size: int | None = None) -> Image.Image:
    """``image`` warped so that its five ``landmarks`` ``(5, 2)`` (pixel-centre coordinates) land on
    ``template``'s points in a ``size x size`` output (bilinear, black outside the image)."""
    problem = landmark_problem(landmarks)
    if problem:
        raise FairError(problem)
    size = output_size(template, size)
    matrix = umeyama(np.asarray(landmarks, dtype=np.float64), template_points(template, size))
    return _working_mode(image).transform((size, size), Image.Transform.AFFINE, pil_affine_coefficients(matrix),
                                          resample=Image.Resampling.BILINEAR, fillcolor=0)


def crop_box(image: Image.Image, box: Sequence[float], size: int, margin: float = DEFAULT_BOX_MARGIN) -> Image.Image:
    """The box ``(left, top, right, bottom)`` (pixel edges) widened by ``margin`` pixels (half on each
    side), clamped to the image, resized to ``size x size``; an empty region is a :class:`FairError`."""
    if not 1 <= size <= MAX_OUTPUT_SIZE:
        raise FairError(f"size: {size} is outside 1..{MAX_OUTPUT_SIZE}")
    left, top, right, bottom = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (left, top, right, bottom, margin)) or margin < 0:
        raise FairError(f"box {tuple(box)} with margin {margin}: expected finite numbers and a margin >= 0")
    half = margin / 2
    region = (max(0.0, left - half), max(0.0, top - half), min(float(image.width), right + half),
              min(float(image.height), bottom + half))
    if region[2] - region[0] <= 0 or region[3] - region[1] <= 0:
        raise FairError(f"empty box: ({left:g}, {top:g}, {right:g}, {bottom:g}) with margin {margin:g} "
                        f"covers no pixel of the {image.width}x{image.height} image")
    return _working_mode(image).resize((size, size), Image.Resampling.BILINEAR, box=region)


# --------------------------------------------------------------------------- landmarks file
@dataclass(frozen=True)
class FaceRow:
    """One row of a landmarks file: five landmarks ``(5, 2)``, or a box, or neither (no face found)."""

    line: int
    landmarks: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None


def _image_name(text: str, where: str) -> str:
    name = text.strip()
    path = PurePosixPath(name)
    if not name or name.startswith("/") or "\\" in name or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise FairError(f"{where}: image {name[:200]!r}: expected a path relative to the source folder, with '/' "
                        f"and no '..'")
    return path.as_posix()


def _numbers(row: dict[str, str], columns: Sequence[str], where: str) -> list[float] | None:
    """The cells ``columns`` as numbers, ``None`` when all are empty; partly empty or not a finite number: an error."""
    cells = [row[c].strip() for c in columns]
    if not any(cells):
        return None
    empty = [c for c, cell in zip(columns, cells, strict=True) if not cell]
    if empty:
        raise FairError(f"{where}: columns {', '.join(empty)} are empty while {', '.join(c for c in columns if c not in empty)} "
                        f"are filled; fill all of {', '.join(columns)} or none")
    values = []
    for column, cell in zip(columns, cells, strict=True):
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise FairError(f"{where}: column {column}: {cell[:40]!r} is not a finite number")
        values.append(value)
    return values


def read_landmarks(path: str | Path) -> dict[str, FaceRow]:
    """The rows of a landmarks file (see the module docstring) by image name; every malformation is
    one :class:`FairError` line naming ``file:line``."""
    path = Path(path)
    data = read_bounded(path, MAX_LANDMARKS_FILE_BYTES, "fair_face.align.MAX_LANDMARKS_FILE_BYTES", "landmarks file")
    text = decode_text(data, str(path))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)
        if header is None:
            raise FairError(f"{path}: empty landmarks file; expected a header 'image,{','.join(LANDMARK_COLUMNS)}' "
                            f"and/or '{','.join(BOX_COLUMNS)}'")
        header_line = reader.line_num
        columns = [cell.strip() for cell in header]
        allowed = ("image", *LANDMARK_COLUMNS, *BOX_COLUMNS)
        unknown = [c for c in columns if c not in allowed]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if unknown or repeated:
            what = f"unknown column {unknown[0][:40]!r}" if unknown else f"column {repeated[0]!r} appears twice"
            raise FairError(f"{path}:{header_line}: {what}; the header has 'image' and the columns "
                            f"{','.join(LANDMARK_COLUMNS)} and/or {','.join(BOX_COLUMNS)}")
        has_landmarks = any(c in LANDMARK_COLUMNS for c in columns)
        has_box = any(c in BOX_COLUMNS for c in columns)
        for present, wanted in ((has_landmarks, LANDMARK_COLUMNS), (has_box, BOX_COLUMNS)):
            missing = [c for c in wanted if c not in columns]
            if present and missing:
                raise FairError(f"{path}:{header_line}: the header lacks {', '.join(missing)}; "
                                f"it needs all of {','.join(wanted)}")
        if "image" not in columns or not (has_landmarks or has_box):
            raise FairError(f"{path}:{header_line}: the header needs 'image' and the columns {','.join(LANDMARK_COLUMNS)} "
                            f"and/or {','.join(BOX_COLUMNS)}; found {','.join(c[:40] for c in columns[:16])}")
        rows: dict[str, FaceRow] = {}
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            where = f"{path}:{reader.line_num}"
            if len(cells) != len(columns):
                raise FairError(f"{where}: {len(cells)} cells, the header has {len(columns)} columns")
            row = dict(zip(columns, cells, strict=True))
            name = _image_name(row["image"], where)
            if name in rows:
                raise FairError(f"{where}: image {name[:200]!r} already has a row on line {rows[name].line}")
            points = _numbers(row, LANDMARK_COLUMNS, where) if has_landmarks else None
            box = _numbers(row, BOX_COLUMNS, where) if has_box and points is None else None
            rows[name] = FaceRow(reader.line_num, None if points is None else np.array(points).reshape(5, 2),
                                 None if box is None else tuple(box))
    except csv.Error as exc:
        raise FairError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    return rows


# --------------------------------------------------------------------------- folders
class AlignSettings(BaseModel):
    """How :func:`align_folder` aligns."""

    model_config = ConfigDict(extra="forbid")
    template: TemplateName = Field("arcface112", description="landmark template: arcface112 (insightface) or "
                                   "fairface256 (FairFace challenge)")
    size: int | None = Field(None, ge=16, le=MAX_OUTPUT_SIZE, description="output side in pixels (default: the "
                             "template's own, 112 or 256); arcface112 takes multiples of 112 or 128")
    margin: float = Field(DEFAULT_BOX_MARGIN, ge=0, le=1000, description="pixels added to a box's width and height "
                          "(half on each side) for images with only a box")
    overwrite: bool = Field(False, description="re-align images already in the destination (else they are skipped)")


@dataclass
class AlignReport:
    """What :func:`align_folder` did: counts, and every image it could not align with the reason."""

    destination: Path
    aligned: int = 0
    from_box: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows_without_image: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"aligned {self.aligned} images into {self.destination} ({self.aligned - self.from_box} by landmarks, "
                f"{self.from_box} by box)")
        if self.skipped:
            text += f"; skipped {self.skipped} already aligned (overwrite to redo them)"
        text += f"; {len(self.failed)} could not be aligned"
        if self.rows_without_image:
            text += f"; {len(self.rows_without_image)} rows of the landmarks file name no image in the source folder"
        return text

    def lines(self, limit: int | None = None) -> list[str]:
        """The summary, then ``name: reason`` per image not aligned (the first ``limit``)."""
        shown = self.failed if limit is None else self.failed[:limit]
        lines = [self.summary(), *(f"  {name}: {reason}" for name, reason in shown)]
        if len(shown) < len(self.failed):
            lines.append(f"  ... and {len(self.failed) - len(shown)} more")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def image_names(folder: Path) -> list[str]:
    """The images under ``folder`` (recursively), as sorted relative paths with ``/``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _align_one(path: Path, name: str, row: FaceRow, settings: AlignSettings, size: int) -> Image.Image:
    with open_image(path, name) as image:
        try:
            image = ImageOps.exif_transpose(image)  # upright, as OpenCV's imread gives it to a detector
            if row.landmarks is not None:
                return align_face(image, row.landmarks, settings.template, size)
            return crop_box(image, row.box, size, settings.margin)
        except FairError:
            raise
        except Exception as exc:  # PIL's decoders raise OSError, ValueError, struct.error, ... on corrupt data
            raise FairError(f"corrupt image {name}: {one_line(exc)}") from None


def _save(image: Image.Image, target: Path) -> None:
    fmt = SAVE_FORMATS[target.suffix.lower()]
    options = {"quality": JPEG_QUALITY} if fmt in ("JPEG", "WEBP") else {}
    try:
        with atomic_path(target) as tmp:
            image.save(tmp, format=fmt, **options)
    except OSError as exc:
        raise FairError(f"{target}: cannot write the aligned image: {exc.strerror or exc}") from None


def align_folder(src: str | Path, dst: str | Path, landmarks: str | Path, template: TemplateName = "arcface112",
                 size: int | None = None, *, margin: float = DEFAULT_BOX_MARGIN, overwrite: bool = False,
                 progress: bool = True) -> AlignReport:
    """Align every image under ``src`` by its row of the ``landmarks`` file into the same relative
    path under ``dst`` (see the module docstring). Images that cannot be aligned are listed in the
    report with the reason; a bad landmarks file, bad settings or an unwritable destination stop with
    a :class:`FairError`."""
    try:
        settings = AlignSettings(template=template, size=size, margin=margin, overwrite=overwrite)
    except ValidationError as exc:
        raise FairError(validation_message(exc, "", AlignSettings)) from None
    out_size = output_size(settings.template, settings.size)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FairError(f"source folder not found: {src}")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise FairError(f"destination {dst} is inside the source folder {src}; choose a folder outside it "
                        f"(the originals must stay, and a second run would align the aligned images)")
    rows = read_landmarks(landmarks)
    names = image_names(src)
    report = AlignReport(destination=dst)
    report.rows_without_image = sorted(set(rows) - set(names))
    for name in tqdm(names, desc="aligning", unit="image", disable=not progress):
        row = rows.get(name)
        if row is None:
            report.failed.append((name, f"no row in the landmarks file {Path(landmarks).name}"))
            continue
        if row.landmarks is None and row.box is None:
            report.failed.append((name, f"no landmarks and no box on line {row.line} of {Path(landmarks).name}"))
            continue
        target = dst / name
        if target.exists() and not settings.overwrite:
            report.skipped += 1
            continue
        try:
            aligned = _align_one(src / name, name, row, settings, out_size)
        except FairError as exc:
            report.failed.append((name, str(exc)))
            continue
        _save(aligned, target)
        report.aligned += 1
        report.from_box += row.landmarks is None
    return report
