"""CelebA-HQ and FairFace in their distributed layouts, and images read from a zip (on disk or in memory)."""

import csv
import pickle
import random
import zipfile

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import CELEBA_ATTRIBUTES, write_jpeg
from fair_core import FairError
from fair_data.celebahq import CelebAHQ
from fair_data.fairface import AGES, RACES, FairFace
from fair_data.images import ZipImages, open_store
from fair_data.utkface import UTKFace

# Original CelebA indices: train < 162770 <= val < 182637 <= test
ORIGINAL_INDEX = [5, 162769, 162770, 182636, 182637, 200000, 10, 20]


@pytest.fixture
def celebahq_root(tmp_path):
    root = tmp_path / "CelebAMask-HQ"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    rng = random.Random(0)
    rows, mapping = [], ["idx orig_idx orig_file"]
    for idx, original in enumerate(ORIGINAL_INDEX):
        write_jpeg(root / "CelebA-HQ-img" / f"{idx}.jpg", idx, (32, 32))
        values = [rng.choice([-1, 1]) for _ in CELEBA_ATTRIBUTES]
        values[CELEBA_ATTRIBUTES.index("Male")] = 1 if idx % 2 else -1
        rows.append(f"{idx}.jpg  " + " ".join(str(v) for v in values))
        mapping.append(f"{idx:<12d}{original:<12d}{original + 1:06d}.jpg")
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text(
        f"{len(rows)}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    return root


def test_celebahq_splits_follow_celeba_partition(celebahq_root):
    builder = CelebAHQ(CelebAHQ.Params(root=celebahq_root, image_size=16))
    splits = {s: builder.load(s, "Smiling", ["Male"]) for s in builder.splits}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert [p.name for p in splits["val"].split.images.paths] == ["2.jpg", "3.jpg"]
    assert splits["test"].groups.tolist() == [0, 1]  # 4.jpg Female, 5.jpg Male
    assert splits["train"].info.group_names == ("Female", "Male")
    assert splits["train"][0]["image"].shape == (3, 16, 16)
    (celebahq_root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n0 x 1.jpg\n")
    with pytest.raises(FairError, match="mapping.txt: line 2 is not 'idx orig_idx orig_file'"):
        builder.load("train", None, None)


def write_fairface(root, n_train=40, n_val=14):
    rng = random.Random(2)
    root.mkdir()
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir()
        with (root / f"fairface_label_{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "age", "gender", "race", "service_test"])
            for i in range(1, n + 1):
                write_jpeg(root / split / f"{i}.jpg", i, (24, 24))
                writer.writerow([f"{split}/{i}.jpg", rng.choice(AGES), rng.choice(["Male", "Female"]),
                                 RACES[i % len(RACES)], rng.choice(["True", "False"])])
    return root


def test_fairface_labels_splits_and_groups(tmp_path):
    root = write_fairface(tmp_path / "fairface")
    builder = FairFace(FairFace.Params(root=root, image_size=16, val_fraction=0.25))
    train, val, test = (builder.load(s, None, None) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (30, 10, 14)
    assert not set(train.split.images.paths) & set(val.split.images.paths)
    assert len(set(train.split.images.paths) | set(val.split.images.paths)) == 40
    assert test.info.group_names == RACES and test.info.class_names == ("Male", "Female")
    with (root / "fairface_label_val.csv").open() as handle:
        labels = list(csv.DictReader(handle))
    assert [RACES[g] for g in test.groups.tolist()] == [row["race"] for row in labels]
    assert [("Male", "Female")[t] for t in test.targets.tolist()] == [row["gender"] for row in labels]
    assert test.split.images.paths[3] == root / "val" / "4.jpg"
    binary = FairFace(FairFace.Params(root=root, race_groups="binary")).load("test", "age", ["race"])
    assert binary.info.group_names == ("White", "Others") and binary.info.class_names == AGES
    assert binary.groups.tolist() == [int(row["race"] != "White") for row in labels]


def test_fairface_bad_label_names_the_line(tmp_path):
    root = write_fairface(tmp_path / "fairface")
    text = (root / "fairface_label_val.csv").read_text().splitlines()
    text[3] = "val/3.jpg,20-29,Male,Martian,False"
    (root / "fairface_label_val.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(FairError, match="fairface_label_val.csv: line 4: unknown race 'Martian'; allowed: White, Black"):
        FairFace(FairFace.Params(root=root)).load("test", None, None)


def zip_folder(folder, zip_path, inner):
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*.jpg")):
            archive.write(path, f"{inner}{path.relative_to(folder).as_posix()}")


@pytest.mark.parametrize("kind", ["zip", "zip_in_memory"])
def test_fairface_from_its_zip_matches_the_folder(tmp_path, kind):
    root = write_fairface(tmp_path / "fairface")
    zip_folder(root, root / "fairface-img-margin025-trainval.zip", "")
    from_folder = FairFace(FairFace.Params(root=root, image_size=16)).load("test", None, None)
    from_zip = FairFace(FairFace.Params(root=root, image_size=16, image_store=kind)).load("test", None, None)
    assert isinstance(from_zip.split.images, ZipImages) and (from_zip.split.images.data is not None) == (kind == "zip_in_memory")
    for i in range(len(from_folder)):
        assert torch.equal(from_folder[i]["image"], from_zip[i]["image"])


@pytest.mark.filterwarnings("ignore:UTKFace")
def test_utkface_zip_only_and_workers_decode(tmp_path):
    """Only UTKFace.zip exists (its images under UTKFace/): auto reads it; two DataLoader workers
    decode from the in-memory copy, and a pickled store reopens its archive."""
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    for i in range(20):
        write_jpeg(folder / f"{25 + i}_{i % 2}_{i % 5}_2017{i:04d}.jpg", i, (12, 12))
    zip_folder(folder, tmp_path / "UTKFace.zip", "UTKFace/")
    expected = UTKFace(UTKFace.Params(root=folder, image_size=12)).load("train", None, None)
    expected_images = torch.stack([expected[i]["image"] for i in range(len(expected))])
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    dataset = UTKFace(UTKFace.Params(root=folder, image_size=12, image_store="zip_in_memory")).load("train", None, None)
    assert dataset.split.images.members[0].startswith("UTKFace/")
    copy = pickle.loads(pickle.dumps(dataset.split.images))
    assert copy._archive is None and torch.equal(copy[0], dataset.split.images[0])
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    assert torch.equal(torch.cat([batch["image"] for batch in loader]), expected_images)


def test_zip_errors_name_the_path(tmp_path):
    with pytest.raises(FairError, match="image folder not found: .*faces \\(nor its zip faces.zip\\)"):
        open_store(tmp_path / "faces", tmp_path / "faces.zip")
    (tmp_path / "faces.zip").write_bytes(b"not a zip")
    with pytest.raises(FairError, match="corrupt zip .*faces.zip"):
        open_store(tmp_path / "faces", tmp_path / "faces.zip")
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as archive:
        archive.writestr("faces/1.jpg", b"not a jpeg")
    store = open_store(tmp_path / "faces", tmp_path / "faces.zip", "zip_in_memory")
    assert store.names() == ["1.jpg"]
    with pytest.raises(FairError, match="corrupt image .*faces.zip:faces/1.jpg"):
        store.images(["1.jpg"], 8)[0]
