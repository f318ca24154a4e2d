"""Face alignment: Umeyama's similarity transform, sub-pixel warping onto the templates, the box
fallback, the landmarks file and align_folder over a folder."""

import math

import numpy as np
import pytest
from PIL import Image

from fair_core import FairError
from fair_face import align
from fair_face.align import align_face, align_folder, crop_box, read_landmarks, template_points, umeyama


def similarity(angle, scale, tx, ty):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def least_squares_similarity(src, dst):
    """The best map x -> [[a, -b], [b, a]] x + t by linear least squares over (a, b, tx, ty): every
    rotation with a scale >= 0 is such a matrix, and nothing else is (no reflection)."""
    rows, targets = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        targets += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_umeyama_recovers_a_known_similarity_exactly():
    rng = np.random.default_rng(0)
    for _ in range(20):
        matrix = similarity(rng.uniform(-math.pi, math.pi), rng.uniform(0.2, 5), *rng.uniform(-100, 100, 2))
        src = rng.uniform(0, 200, (5, 2))
        np.testing.assert_allclose(umeyama(src, apply(matrix, src)), matrix, atol=1e-9)


def test_umeyama_is_the_least_squares_similarity_with_noise_and_never_reflects():
    rng = np.random.default_rng(1)
    for trial in range(20):
        src = rng.uniform(0, 100, (5, 2))
        dst = apply(similarity(rng.uniform(-3, 3), rng.uniform(0.5, 2), 10, -5), src) + rng.normal(0, 4, (5, 2))
        if trial % 2:
            dst[:, 0] = -dst[:, 0]  # a mirrored target: the best fit must still be a rotation
        matrix = umeyama(src, dst)
        np.testing.assert_allclose(matrix, least_squares_similarity(src, dst), atol=1e-9)
        assert np.linalg.det(matrix[:, :2]) > 0
        residual = ((apply(matrix, src) - dst) ** 2).sum()
        for _ in range(50):  # no nearby similarity fits better
            a, b, tx, ty = rng.normal(0, 1e-3, 4)
            other = matrix + np.array([[a, -b, tx], [b, a, ty]])
            assert ((apply(other, src) - dst) ** 2).sum() >= residual - 1e-9


def test_umeyama_refuses_coincident_points():
    with pytest.raises(FairError, match="coincide"):
        umeyama(np.ones((5, 2)), np.random.default_rng(0).uniform(0, 1, (5, 2)))


def test_template_sizes_follow_insightface():
    arcface = template_points("arcface112")
    np.testing.assert_allclose(arcface[0], [38.2946, 51.6963])
    np.testing.assert_allclose(template_points("arcface112", 224), 2 * arcface)
    np.testing.assert_allclose(template_points("arcface112", 128), arcface + [8, 0])  # 112 layout centred in 128
    np.testing.assert_allclose(template_points("arcface112", 256), 2 * (arcface + [8, 0]))
    np.testing.assert_allclose(template_points("fairface256", 128), template_points("fairface256") / 2)
    with pytest.raises(FairError, match="multiples of 112 or 128"):
        template_points("arcface112", 100)
    with pytest.raises(FairError, match="arcface112, fairface256"):
        template_points("dlib68", 112)


def gaussian_dots(points, sigma, width, height):
    """A dark ``width x height`` grayscale image with a bright Gaussian dot centred on each point (pixel
    centres at integer coordinates)."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points)
    return Image.fromarray(np.clip(np.rint(pixels * 250), 0, 255).astype(np.uint8), mode="L")


def dot_centres(image, guesses, radius=5):
    """The intensity centroid of the image around each guessed position (pixel centres at integers),
    refined once around the first centroid."""
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels.mean(2)
    ys, xs = np.mgrid[0:pixels.shape[0], 0:pixels.shape[1]]
    centres = []
    for guess in guesses:
        centre = np.asarray(guess, dtype=np.float64)
        for _ in range(2):
            window = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2
            weights = pixels * window
            centre = np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
        centres.append(centre)
    return np.array(centres)


@pytest.mark.parametrize(("template", "size", "angle", "scale"), [
    ("arcface112", None, 0.35, 1.7),   # a larger face, rotated: the warp shrinks it
    ("arcface112", 128, -0.6, 0.8),    # a smaller face: the warp enlarges it; insightface's 128 layout
    ("fairface256", 128, 2.5, 1.3),    # nearly upside down
])
def test_alignment_maps_the_landmarks_onto_the_template_within_a_tenth_of_a_pixel(template, size, angle, scale):
    target = template_points(template, size)
    centre = target.mean(0)
    # the face in the source image: the template turned by angle, scaled, moved to (150, 120)
    c, s = math.cos(angle), math.sin(angle)
    landmarks = (target - centre) @ (scale * np.array([[c, -s], [s, c]])).T + [150.3, 120.7]
    sigma = 1.4  # in output pixels
    source = gaussian_dots(landmarks, sigma * scale, 300, 260).convert("RGB")
    aligned = align_face(source, landmarks, template, size)
    assert aligned.size == (size or 112,) * 2 and aligned.mode == "RGB"
    found = dot_centres(aligned, np.rint(target))
    error = np.linalg.norm(found - target, axis=1)
    assert error.max() < 0.1, error  # the issue asks for 0.5 px; a half-pixel convention slip shows as 0.2 px and more


def test_align_face_refuses_degenerate_landmarks():
    image = Image.new("RGB", (64, 64))
    with pytest.raises(FairError, match="within 1 px"):
        align_face(image, [[30, 30], [30.2, 30], [30, 30.3], [30.1, 30.1], [30, 30]])
    with pytest.raises(FairError, match="collinear"):
        align_face(image, [[10, 10], [20, 20], [30, 30], [40, 40], [50, 50]])
    with pytest.raises(FairError, match="finite"):
        align_face(image, [[10, 10], [20, 20], [30, math.nan], [40, 40], [50, 50]])


def test_crop_box_adds_the_margin_and_clamps_to_the_image():
    pixels = np.zeros((100, 120), dtype=np.uint8)
    pixels[20:60, 30:70] = 200  # a bright square: the box's inside
    image = Image.fromarray(pixels, mode="L")
    crop = np.asarray(crop_box(image, (30, 20, 70, 60), 80, margin=40))  # 20 px on each side: 80 x 80 region
    assert crop.shape == (80, 80)
    assert crop[20:60, 20:60].min() == 200 and crop[:18].max() == 0 and crop[:, 62:].max() == 0
    assert crop_box(image, (-50, -50, 10, 10), 32).size == (32, 32)  # clamped to (0, 0, 15, 15)
    np.testing.assert_array_equal(np.asarray(crop_box(image, (-50, -50, 10, 10), 15)), pixels[:15, :15])
    with pytest.raises(FairError, match="empty box"):
        crop_box(image, (200, 200, 300, 300), 32)


LANDMARK_HEADER = "image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5,left,top,right,bottom"


def face_landmarks(offset=(0.0, 0.0)):
    return template_points("arcface112") * 1.5 + offset


def csv_row(name, points=None, box=None):
    landmarks = ",".join(f"{v:.4f}" for v in points.ravel()) if points is not None else "," * 9
    return f"{name},{landmarks},{','.join(str(v) for v in box) if box else ',,,'}"


def test_align_folder_aligns_reports_by_name_and_resumes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "out"
    (src / "a" / "b").mkdir(parents=True)
    points = face_landmarks((10, 5))
    dots = gaussian_dots(points, 2.0, 200, 190).convert("RGB")
    dots.save(src / "a" / "one.png")
    dots.save(src / "a" / "b" / "two.jpg", quality=98)
    dots.save(src / "boxed.jpg")
    dots.save(src / "no_row.jpg")
    dots.save(src / "collinear.png")
    (src / "broken.jpg").write_bytes(b"not an image at all")
    (src / "notes.txt").write_text("not an image")
    lines = [LANDMARK_HEADER, csv_row("a/one.png", points), csv_row("a/b/two.jpg", points),
             csv_row("boxed.jpg", box=(40, 50, 160, 170)), csv_row("broken.jpg", points),
             csv_row("collinear.png", np.stack([np.arange(5.0) * 10] * 2, axis=1)), csv_row("gone.jpg", points)]
    landmarks = tmp_path / "landmarks.csv"
    landmarks.write_text("\n".join(lines) + "\n")

    report = align_folder(src, dst, landmarks, progress=False)
    assert (report.aligned, report.from_box, report.skipped) == (3, 1, 0)
    failed = dict(report.failed)
    assert set(failed) == {"broken.jpg", "collinear.png", "no_row.jpg"}
    assert "not an image" in failed["broken.jpg"] and "collinear" in failed["collinear.png"]
    assert "no row" in failed["no_row.jpg"]
    assert report.rows_without_image == ["gone.jpg"]
    assert "broken.jpg: " in str(report) and report.summary().startswith("aligned 3 images")

    written = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*"))
    assert written == ["a", "a/b", "a/b/two.jpg", "a/one.png", "boxed.jpg"]  # no temporary files left
    with Image.open(dst / "a" / "one.png") as one, Image.open(dst / "a" / "b" / "two.jpg") as two:
        assert (one.format, one.size, two.format, two.size) == ("PNG", (112, 112), "JPEG", (112, 112))
        found = dot_centres(one, np.rint(template_points("arcface112")))
        assert np.abs(found - template_points("arcface112")).max() < 0.15

    again = align_folder(src, dst, landmarks, progress=False)
    assert (again.aligned, again.skipped) == (0, 3)
    redone = align_folder(src, dst, landmarks, "fairface256", 128, overwrite=True, progress=False)
    assert redone.aligned == 3
    with Image.open(dst / "a" / "one.png") as one:
        assert one.size == (128, 128)


def test_align_folder_turns_images_upright_by_their_exif_orientation(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    points = face_landmarks((20, 10))  # in the upright image, as a detector reading it with OpenCV gives them
    upright = gaussian_dots(points, 2.0, 220, 180)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels are the upright image turned 90 degrees counter-clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(src / "turned.png", exif=exif)
    landmarks = tmp_path / "landmarks.csv"
    landmarks.write_text(f"{LANDMARK_HEADER}\n{csv_row('turned.png', points)}\n")
    assert align_folder(src, tmp_path / "out", landmarks, progress=False).aligned == 1
    with Image.open(tmp_path / "out" / "turned.png") as aligned:
        target = template_points("arcface112")
        assert np.abs(dot_centres(aligned, np.rint(target)) - target).max() < 0.15


def test_align_folder_refuses_bad_settings_and_a_destination_inside_the_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    landmarks = tmp_path / "landmarks.csv"
    landmarks.write_text("image,left,top,right,bottom\n")
    with pytest.raises(FairError, match="template"):
        align_folder(src, tmp_path / "out", landmarks, template="dlib68", progress=False)
    with pytest.raises(FairError, match="size"):
        align_folder(src, tmp_path / "out", landmarks, size=8, progress=False)
    with pytest.raises(FairError, match="inside the source folder"):
        align_folder(src, src / "aligned", landmarks, progress=False)
    with pytest.raises(FairError, match="source folder not found"):
        align_folder(tmp_path / "missing", tmp_path / "out", landmarks, progress=False)


def test_read_landmarks_rows(tmp_path):
    path = tmp_path / "landmarks.csv"
    points = face_landmarks()
    path.write_text("\n".join([LANDMARK_HEADER, csv_row("x/a.jpg", points), "", csv_row("b.jpg", box=(1, 2, 30, 40)),
                               csv_row("c.jpg"), csv_row("./d.jpg", points, box=(1, 2, 3, 4))]) + "\n")
    rows = read_landmarks(path)
    assert list(rows) == ["x/a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    np.testing.assert_allclose(rows["x/a.jpg"].landmarks, points, atol=1e-4)
    assert rows["b.jpg"].landmarks is None and rows["b.jpg"].box == (1, 2, 30, 40) and rows["b.jpg"].line == 4
    assert rows["c.jpg"].landmarks is None and rows["c.jpg"].box is None
    assert rows["d.jpg"].box is None  # landmarks win when both are given
    boxes_only = tmp_path / "boxes.csv"
    boxes_only.write_text("image,left,top,right,bottom\nz.png,1,2,3,4\n")
    assert read_landmarks(boxes_only)["z.png"].box == (1, 2, 3, 4)


LANDMARKS = ",".join(["1"] * 10)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty landmarks file"),
    ("name,x1,y1\n", ":1: unknown column 'name'"),
    ("image,x1,y1,x2,y2\n", ":1: the header lacks x3, y3"),
    ("image,left,top,right,bottom,left\n", ":1: column 'left' appears twice"),
    ("image\na.jpg\n", ":1: the header needs 'image' and the columns"),
    ("x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n" + LANDMARKS + "\n", ":1: the header needs 'image'"),
    (f"image,{','.join(align.LANDMARK_COLUMNS)}\na.jpg,{LANDMARKS}\nb.jpg,1,2,three,4,5,6,7,8,9,10\n",
     ":3: column x2: 'three' is not a finite number"),
    (f"image,{','.join(align.LANDMARK_COLUMNS)}\na.jpg,1,2,3,4,5,6,7,8,9,inf\n", ":2: column y5: 'inf' is not a finite"),
    (f"image,{','.join(align.LANDMARK_COLUMNS)}\na.jpg,1,2,3,4,5,6,,,9,10\n", ":2: columns x4, y4 are empty"),
    (f"image,{','.join(align.LANDMARK_COLUMNS)}\na.jpg,1,2,3\n", ":2: 4 cells, the header has 11 columns"),
    (f"image,{','.join(align.LANDMARK_COLUMNS)}\na.jpg,{LANDMARKS}\n\na.jpg,{LANDMARKS}\n",
     ":4: image 'a.jpg' already has a row on line 2"),
    (f"image,{','.join(align.LANDMARK_COLUMNS)}\n/etc/a.jpg,{LANDMARKS}\n", ":2: image '/etc/a.jpg': expected a path relative"),
    (f"image,{','.join(align.LANDMARK_COLUMNS)}\nx/../../a.jpg,{LANDMARKS}\n", ":2: image 'x/../../a.jpg'"),
])
def test_read_landmarks_errors_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "marks.csv"
    path.write_text(text)
    with pytest.raises(FairError) as error:
        read_landmarks(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_read_landmarks_refuses_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "marks.csv"
    path.write_bytes(b"image,left,top,right,bottom\n\xff.jpg,1,2,3,4\n")
    with pytest.raises(FairError, match=r"marks.csv: line 2: not UTF-8"):
        read_landmarks(path)
    with pytest.raises(FairError, match="landmarks file not found"):
        read_landmarks(tmp_path / "missing.csv")
