"""CelebA and UTKFace loaders on tiny datasets written in their real on-disk formats."""

import random
import warnings

import pytest
import torch

from conftest import CELEBA_ATTRIBUTES as ATTRIBUTES
from conftest import write_jpeg
from fair_core import FairError
from fair_data.celeba import CelebA
from fair_data.utkface import UTKFace


@pytest.fixture
def celeba_root(tmp_path):
    """12 images: partitions 0 x 8, 1 x 2, 2 x 2; Blond_Hair and Male set per row."""
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    rng = random.Random(0)
    names, attr_lines, partition_lines = [], [], []
    blond_male = [(0, 0), (0, 0), (0, 0), (0, 0), (1, 0), (1, 1), (0, 1), (0, 1), (1, 0), (0, 1), (0, 0), (1, 1)]
    for i, (blond, male) in enumerate(blond_male, start=1):
        name = f"{i:06d}.jpg"
        write_jpeg(root / "img_align_celeba" / name, i)
        values = [rng.choice([-1, 1]) for _ in ATTRIBUTES]
        values[ATTRIBUTES.index("Blond_Hair")] = 1 if blond else -1
        values[ATTRIBUTES.index("Male")] = 1 if male else -1
        attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
        partition_lines.append(f"{name} {0 if i <= 8 else 1 if i <= 10 else 2}")
        names.append(name)
    (root / "list_attr_celeba.txt").write_text(f"{len(names)}\n" + " ".join(ATTRIBUTES) + " \n" + "\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition_lines) + "\n")
    return root


def test_celeba_splits_attributes_and_images(celeba_root):
    builder = CelebA(CelebA.Params(root=celeba_root, image_size=16))
    train = builder.load("train", None, None)
    assert len(train) == 8 and len(builder.load("val", None, None)) == 2 and len(builder.load("test", None, None)) == 2
    assert train.info.class_names == ("not Blond_Hair", "Blond_Hair") and train.info.group_names == ("Female", "Male")
    assert train.cell_counts().tolist() == [[4, 2], [1, 1]]  # [blond][male] in partition 0
    item = train[0]
    assert item["image"].shape == (3, 16, 16)
    smiling = builder.load("test", "Smiling", ["Male", "Young"])
    assert smiling.info.group_names == ("Female/not Young", "Female/Young", "Male/not Young", "Male/Young")


def test_celeba_study_blond_subset(celeba_root):
    builder = CelebA(CelebA.Params(root=celeba_root, image_size=16, blond_subset=True, blond_subset_size=1))
    assert builder.load("train", None, None).cell_counts().tolist() == [[1, 2], [1, 1]]
    assert builder.load("test", None, None).cell_counts().sum() == 2  # only training is subsampled


def test_celeba_errors_name_the_path(celeba_root, tmp_path):
    with pytest.raises(FairError, match="CelebA root not found: .*nowhere"):
        CelebA(CelebA.Params(root=tmp_path / "nowhere")).load("train", None, None)
    with pytest.raises(FairError, match="data.target: unknown attribute 'Blonde'"):
        CelebA(CelebA.Params(root=celeba_root)).load("train", "Blonde", None)
    (celeba_root / "img_align_celeba/000001.jpg").write_bytes(b"not a jpeg")
    dataset = CelebA(CelebA.Params(root=celeba_root, image_size=16)).load("train", None, None)
    with pytest.raises(FairError, match="corrupt image .*000001.jpg"):
        dataset[0]
    (celeba_root / "list_eval_partition.txt").unlink()
    with pytest.raises(FairError, match="partition file not found"):
        CelebA(CelebA.Params(root=celeba_root)).load("train", None, None)


@pytest.fixture
def utk_root(tmp_path):
    root = tmp_path / "UTKFace"
    root.mkdir()
    rng = random.Random(1)
    for i in range(300):
        age = rng.choice([3, 7, 15, 25, 40, 70])
        name = f"{age}_{rng.randint(0, 1)}_{rng.randint(0, 4)}_2017011{i:04d}.jpg" + (".chip.jpg" if i % 7 == 0 else "")
        write_jpeg(root / name, i, (12, 12))
    write_jpeg(root / "39_1_20170116174525125.jpg", 999, (12, 12))  # a known malformed name in the real data
    return root


def test_utkface_parses_names_and_reports_malformed_files(utk_root):
    builder = UTKFace(UTKFace.Params(root=utk_root, image_size=12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = {s: builder.load(s, None, None) for s in ("train", "val", "test")}
    assert any("39_1_20170116174525125.jpg" in str(w.message) for w in caught)
    ages = [int(p.name.split("_")[0]) for s in splits.values() for p in s.split.images.paths]
    assert not any(11 <= a <= 19 for a in ages)  # the study drops teenagers
    total = sum(len(s) for s in splits.values())
    assert total == sum(1 for p in utk_root.iterdir() if not p.name.startswith("39_1_") and not p.name.startswith("15_"))
    train = splits["train"]
    assert train.info.group_names == ("White", "Others") and train.info.class_names == ("Male", "Female")
    for position in range(len(train)):
        path, row = train.split.images.paths[position], train.rows[position]
        age, gender, race = (int(v) for v in path.name.split("_")[:3])
        assert int(train.targets[position]) == gender and int(train.groups[position]) == int(race != 0)
        assert int(train.split.attributes["age"][row]) == int(age <= 10)
    assert train[0]["image"].shape == (3, 12, 12)


@pytest.mark.filterwarnings("ignore:UTKFace")
def test_utkface_bias_rate_construction(utk_root):
    biased = UTKFace(UTKFace.Params(root=utk_root, bias_attribute="age", bias_rate=0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = biased.load("train", "gender", ["age"])
        plain = UTKFace(UTKFace.Params(root=utk_root)).load("train", "gender", ["age"])
    counts, natural = train.cell_counts(), plain.cell_counts()  # [gender][age group]
    for b in (0, 1):
        aligned, other = counts[b, b].item(), counts[1 - b, b].item()
        assert aligned == natural[b, b].item()  # the aligned label keeps everything
        assert other == min(natural[1 - b, b].item(), int(aligned * 0.1 / 0.9))  # the rest capped at 10%
    assert torch.equal(UTKFace(UTKFace.Params(root=utk_root)).load("test", None, None).rows,
                       UTKFace(UTKFace.Params(root=utk_root, bias_attribute="age")).load("test", None, None).rows)


def test_fair_data_check_prints_cell_counts(celeba_root, tmp_path):
    import json
    import os
    import subprocess

    from conftest import FAIR

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data": {"name": "celeba", "params": {"root": str(celeba_root), "image_size": 16}}}))
    result = subprocess.run([*FAIR, "data", "check", str(spec)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "celeba train: 8 images" in result.stdout
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines() if "│" in line]
    assert ["not Blond_Hair", "4", "2"] in rows and ["Blond_Hair", "1", "1"] in rows
    spec.write_text(json.dumps({"data": {"name": "celeba", "params": {"root": str(tmp_path / "none")}}}))
    missing = subprocess.run([*FAIR, "data", "check", str(spec)], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "CelebA root not found" in missing.stderr
