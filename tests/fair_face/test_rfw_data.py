"""The rfw and face_zip datasets, on tiny copies of their real layouts written in tmp_path."""

import csv
import zipfile

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import write_jpeg
from fair_core import FairError
from fair_core.tasks.verification import IdentityDataset, VerificationTask
from fair_face.face_zip import FaceZip, FlipThenNormalize
from fair_face.rfw import RFW

# m.01 is a prefix of m.012 (the original gave m.01 the images of m.012 too), and RFW names a few
# identities in two races (m.01 here): people files list them out of sorted order.
PEOPLE = {
    "African": [("m.05", 2), ("m.012", 3), ("m.01", 2)],
    "Asian": [("m.01", 3), ("m.02", 2)],
}
PAIRS = {
    "African": ["m.012\t1\t3", "m.01\t1\t2", "m.05\t2\t1", "m.01\t1\tm.012\t2", "m.05\t1\tm.01\t2"],
    "Asian": ["m.01\t1\t3", "m.02\t1\t2", "m.01\t2\tm.02\t2"],
}


def write_rfw(root, people=PEOPLE, pairs=PAIRS, extra_images=()):
    """The RFW test layout: txts/<Race>/<Race>_{people,pairs}.txt, data/<Race>/<id>/<id>_000N.jpg."""
    seed = 0
    for race, identities in people.items():
        (root / "txts" / race).mkdir(parents=True)
        (root / "txts" / race / f"{race}_people.txt").write_text("".join(f"{name}\t{n}\n" for name, n in identities))
        if race in pairs:
            (root / "txts" / race / f"{race}_pairs.txt").write_text("\n".join(pairs[race]) + "\n")
        for name, n in identities:
            (root / "data" / race / name).mkdir(parents=True)
            for k in range(1, n + 1):
                write_jpeg(root / "data" / race / name / f"{name}_{k:04d}.jpg", seed, (16, 16))
                seed += 1
    for relative in extra_images:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        write_jpeg(root / relative, 999, (16, 16))
    return root


def zip_tree(folder, zip_path, top="", order=sorted):
    """A zip of every file below ``folder`` under ``top``, members in ``order`` (e.g. reversed)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in order(files):
            archive.write(path, f"{top}{path.relative_to(folder).as_posix()}")
    return zip_path


def load(builder_class, root, **params):
    builder = builder_class(builder_class.Params(root=root, image_size=16, **params))
    return builder.load(builder.splits[0], None, None, task=VerificationTask())


def image_names(dataset):
    """The relative name (``data/<Race>/<id>/<file>``) of the image of every split row."""
    images = dataset.split.images
    if hasattr(images, "paths"):
        return ["/".join(p.parts[-4:]) for p in images.paths]
    return ["/".join(m.split("/")[-4:]) for m in images.members]


def expected_pairs():
    """(image_a, image_b, same) of every line of PAIRS, as file names (read in the test)."""
    rows = []
    for race in sorted(PAIRS):
        for line in PAIRS[race]:
            f = line.split("\t")
            if len(f) == 3:
                rows.append((f"data/{race}/{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"data/{race}/{f[0]}/{f[0]}_{int(f[2]):04d}.jpg", 1))
            else:
                rows.append((f"data/{race}/{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"data/{race}/{f[2]}/{f[2]}_{int(f[3]):04d}.jpg", 0))
    return rows


def check_rfw(dataset):
    """Identities by exact folder, races by folder, pairs on the right images."""
    assert isinstance(dataset, IdentityDataset)
    names = image_names(dataset)
    values = dataset.split.values
    assert values["race"] == ("African", "Asian")
    assert values["identity"] == ("African/m.01", "African/m.012", "African/m.05", "Asian/m.01", "Asian/m.02")
    assert len(dataset) == sum(n for identities in PEOPLE.values() for _, n in identities) == 12
    for row, name in enumerate(names):
        race, identity_folder = name.split("/")[1:3]
        assert values["identity"][dataset.identities[row]] == f"{race}/{identity_folder}"
        assert values["race"][dataset.groups[row]] == race
    per_identity = torch.bincount(dataset.identities).tolist()
    assert per_identity == [2, 3, 2, 3, 2]  # m.01 keeps its 2 images, not m.012's too
    pairs = dataset.split.pairs
    assert [(names[a], names[b], same) for a, b, same in pairs.tolist()] == expected_pairs()
    same_identity = dataset.identities[pairs[:, 0]] == dataset.identities[pairs[:, 1]]
    assert torch.equal(same_identity, pairs[:, 2].bool())


def test_rfw_from_a_folder(tmp_path):
    dataset = load(RFW, write_rfw(tmp_path / "test"))
    check_rfw(dataset)
    assert dataset[0]["image"].shape == (3, 16, 16)
    assert 0 <= dataset[0]["image"].min() and dataset[0]["image"].max() <= 1  # no mean/std: MixFairFace's [0, 1]
    assert dataset.info.preprocessing.mean == (0.0, 0.0, 0.0) and dataset.info.preprocessing.std == (1.0, 1.0, 1.0)
    insightface = load(RFW, tmp_path / "test", normalization="insightface")
    assert torch.allclose(insightface[0]["image"], (dataset[0]["image"] - 0.5) / 0.5)


@pytest.mark.parametrize("top, in_memory, order", [
    ("", False, sorted),
    ("test/", False, lambda files: sorted(files, reverse=True)),  # zip order differs from sorted order
    ("test/", True, lambda files: sorted(files, key=lambda p: (p.suffix, p.name[::-1]))),
])
def test_rfw_from_its_zip_matches_the_folder(tmp_path, top, in_memory, order):
    folder = write_rfw(tmp_path / "test")
    archive = zip_tree(folder, tmp_path / "rfw.zip", top, order)
    from_folder = load(RFW, folder)
    from_zip = load(RFW, archive, in_memory=in_memory)
    check_rfw(from_zip)
    assert (from_zip.split.images.data is not None) == in_memory
    assert all(m.startswith(f"{top}data/") for m in from_zip.split.images.members)
    assert image_names(from_zip) == image_names(from_folder)
    for i in range(len(from_folder)):
        assert torch.equal(from_zip[i]["image"], from_folder[i]["image"])


def test_rfw_races_subset_and_no_pairs_files(tmp_path):
    root = write_rfw(tmp_path / "test", pairs={})
    dataset = load(RFW, root, races=["Asian"])
    assert dataset.split.values["race"] == ("Asian",) and dataset.split.pairs is None
    assert dataset.split.values["identity"] == ("Asian/m.01", "Asian/m.02") and len(dataset) == 5
    with pytest.raises(FairError, match=r"data.params.races: unknown race 'Martian' in .*txts; available: African, Asian"):
        load(RFW, root, races=["Martian"])


def test_rfw_missing_images_and_bad_lines_name_the_file_and_line(tmp_path):
    root = write_rfw(tmp_path / "test")
    (root / "data/African/m.012/m.012_0003.jpg").unlink()
    with pytest.raises(FairError, match=r"African_people.txt: line 2: lists 3 images of m.012, but .*m.012/ holds 2"):
        load(RFW, root)
    write_jpeg(root / "data/African/m.012/m.012_0003.jpg", 1, (16, 16))

    pairs = root / "txts/Asian/Asian_pairs.txt"
    pairs.write_text("m.01\t1\t3\nm.02\t1\t9\n")
    with pytest.raises(FairError, match=r"Asian_pairs.txt: line 2: names image m.02_0009 of Asian/m.02, which is not in the split"):
        load(RFW, root)
    pairs.write_text("m.01\t1\t3\nm.01\t1\tm.02\t2\tx\n")
    with pytest.raises(FairError, match=r"Asian_pairs.txt: line 2: expected '<id> <n1> <n2>' .* got 5 fields"):
        load(RFW, root)
    pairs.write_text("m.01\t1\tthree\n")
    with pytest.raises(FairError, match=r"Asian_pairs.txt: line 1: image number 'three' is not a number"):
        load(RFW, root)
    pairs.unlink()
    with pytest.raises(FairError, match=r"pairs file not found: .*Asian_pairs.txt"):
        load(RFW, root)

    (root / "txts/African/African_people.txt").write_text("m.05\t2\nm.012 three\n")
    with pytest.raises(FairError, match=r"African_people.txt: line 2: expected '<identity> <number of images>', got 'm.012 three'"):
        load(RFW, root, races=["African"])
    with pytest.raises(FairError, match=r"data.params.root: no RFW layout in"):
        load(RFW, root / "data")
    with pytest.raises(FairError, match=r"data.params.in_memory: .* is a folder"):
        load(RFW, root, in_memory=True)


def test_rfw_pair_on_an_identity_missing_from_the_people_file_is_refused(tmp_path):
    # m.09's folder exists, but the people file does not list it: its images are not in the split
    root = write_rfw(tmp_path / "test", extra_images=["data/Asian/m.09/m.09_0001.jpg"])
    (root / "txts/Asian/Asian_pairs.txt").write_text("m.01\t1\tm.09\t1\n")
    with pytest.raises(FairError, match=r"Asian_pairs.txt: line 1: names image m.09_0001 of Asian/m.09"):
        load(RFW, root)


def write_converted(root, rows):
    """A `fair face convert-bin` folder: images plus pairs.csv (race,image_a,image_b,same)."""
    root.mkdir()
    for k, (_, a, b, _) in enumerate(rows):
        for image in (a, b):
            if not (root / image).exists():
                (root / image).parent.mkdir(parents=True, exist_ok=True)
                write_jpeg(root / image, k, (16, 16))
    with (root / "pairs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["race", "image_a", "image_b", "same"])
        writer.writerows(rows)
    return root


CONVERTED = [
    ("African", "African/0000.jpg", "African/0001.jpg", 1),
    ("African", "African/0001.jpg", "African/0002.jpg", 1),  # 0000-0001-0002: one pseudo-identity
    ("African", "African/0003.jpg", "African/0004.jpg", 0),
    ("Asian", "Asian/0001.jpg", "Asian/0000.jpg", 1),
    ("Asian", "Asian/0002.jpg", "Asian/0003.jpg", 0),
]


def test_converted_bin_folder_gives_pseudo_identities(tmp_path):
    dataset = load(RFW, write_converted(tmp_path / "converted", CONVERTED))
    names = [p.relative_to(tmp_path / "converted").as_posix() for p in dataset.split.images.paths]
    assert names == sorted({image for row in CONVERTED for image in row[1:3]})
    identity = {name: dataset.split.values["identity"][code] for name, code in zip(names, dataset.identities.tolist(), strict=True)}
    assert identity["African/0000.jpg"] == identity["African/0001.jpg"] == identity["African/0002.jpg"] == "African/0000.jpg"
    assert identity["Asian/0000.jpg"] == identity["Asian/0001.jpg"] == "Asian/0000.jpg"
    assert len({identity[n] for n in ("African/0003.jpg", "African/0004.jpg", "Asian/0002.jpg", "Asian/0003.jpg")}) == 4
    assert len(dataset.split.values["identity"]) == 6
    assert [dataset.split.values["race"][g] for g in dataset.groups.tolist()] == [n.split("/")[0] for n in names]
    pairs = [(names[a], names[b], same) for a, b, same in dataset.split.pairs.tolist()]
    assert pairs == [(a, b, same) for _, a, b, same in CONVERTED]
    asian = load(RFW, tmp_path / "converted", races=["Asian"])
    assert len(asian) == 4 and asian.split.pairs.shape == (2, 3)


def test_converted_bin_errors_name_the_line(tmp_path):
    root = write_converted(tmp_path / "converted", CONVERTED + [("Asian", "African/0000.jpg", "Asian/0002.jpg", 0)])
    with pytest.raises(FairError, match=r"pairs.csv: line 7: image African/0000.jpg is Asian here but African on line 2"):
        load(RFW, root)
    (root / "pairs.csv").write_text("race,image_a,image_b,same\nAfrican,African/0000.jpg,African/0009.jpg,1\n")
    with pytest.raises(FairError, match=r"pairs.csv: line 2: image not found: .*African/0009.jpg"):
        load(RFW, root)
    (root / "pairs.csv").write_text("race,image_a,image_b,same\nAfrican,../0000.jpg,African/0001.jpg,1\n")
    with pytest.raises(FairError, match=r"pairs.csv: line 2: image path '../0000.jpg' is not a relative path inside the root"):
        load(RFW, root)
    (root / "pairs.csv").write_text("race,a,b,same\n")
    with pytest.raises(FairError, match=r"pairs.csv: line 1: header 'race,a,b,same', expected race,image_a,image_b,same"):
        load(RFW, root)
    (root / "pairs.csv").write_text("race,image_a,image_b,same\nAfrican,African/0000.jpg,African/0001.jpg,maybe\n")
    with pytest.raises(FairError, match=r"pairs.csv: line 2: same 'maybe'; allowed: 1, 0, true, false"):
        load(RFW, root)


# ---------------------------------------------------------------- face_zip
# (race attribute, identity label, exist) per line; line 3 is marked missing and has no image
INDEX = [(0, 0, 1), (0, 0, 1), (2, 1, 0), (2, 1, 1), (1, 2, 1), (3, 3, 1), (3, 3, 1)]


def write_face_zip(path, index=INDEX, skip=(2,), in_folder=False):
    """MixFairFace's training zip: data/index.txt 'name attribute label exist', data/img/%07d.jpg."""
    folder = path.parent / "face_zip_folder"
    (folder / "data/img").mkdir(parents=True)
    lines = []
    for k, (race, label, exist) in enumerate(index):
        lines.append(f"{['African', 'Asian', 'Caucasian', 'Indian'][race]}/id{label}/{k}.jpg {race} {label} {exist}")
        if k not in skip:
            write_jpeg(folder / f"data/img/{k:07d}.jpg", 100 + k, (16, 16))
    (folder / "data/index.txt").write_text("\n".join(lines) + "\n")
    return folder if in_folder else zip_tree(folder, path, order=lambda files: sorted(files, reverse=True))


@pytest.mark.parametrize("in_memory", [False, True])
def test_face_zip_reads_identities_races_and_images(tmp_path, in_memory):
    dataset = load(FaceZip, write_face_zip(tmp_path / "train.zip"), in_memory=in_memory)
    assert isinstance(dataset, IdentityDataset)
    kept = [k for k, (_, _, exist) in enumerate(INDEX) if exist]
    assert dataset.split.images.members == [f"data/img/{k:07d}.jpg" for k in kept]
    assert dataset.identities.tolist() == [INDEX[k][1] for k in kept]
    assert dataset.groups.tolist() == [INDEX[k][0] for k in kept]
    assert dataset.split.values["race"] == ("African", "Asian", "Caucasian", "Indian")
    assert dataset.info.class_names == ("0", "1", "2", "3")  # max label + 1 identity classes
    folder = load(FaceZip, tmp_path / "face_zip_folder")
    assert torch.equal(dataset[2]["image"], folder[2]["image"])
    subset = load(FaceZip, tmp_path / "train.zip", races=["Caucasian", "Indian"])
    assert subset.split.values["race"] == ("Caucasian", "Indian") and subset.groups.tolist() == [0, 1, 1]
    assert subset.split.images.members == ["data/img/0000003.jpg", "data/img/0000005.jpg", "data/img/0000006.jpg"]


def test_face_zip_training_transform_mirrors(tmp_path):
    builder = FaceZip(FaceZip.Params(root=write_face_zip(tmp_path / "train.zip"), image_size=16))
    transform = builder.train_transform()
    assert isinstance(transform, FlipThenNormalize)
    image = torch.rand(3, 16, 16)
    torch.manual_seed(0)
    outputs = [transform(image) for _ in range(20)]
    assert all(torch.equal(o, image) or torch.equal(o, image.flip(-1)) for o in outputs)
    assert any(torch.equal(o, image.flip(-1)) for o in outputs) and any(torch.equal(o, image) for o in outputs)


@pytest.mark.parametrize("line, message", [
    ("African/x.jpg 0 1", r"index.txt: line 2: 3 fields, expected 'name attribute label exist'"),
    ("African/x.jpg 7 1 1", r"index.txt: line 2: race attribute 7 out of range; allowed: 0 \(African\), 1 \(Asian\)"),
    ("African/x.jpg 0 one 1", r"index.txt: line 2: label 'one' is not an integer"),
    ("African/x.jpg 0 1 2", r"index.txt: line 2: exist 2; allowed: 1 \(the image exists\) or 0"),
    ("African/x.jpg 0 99 1", r"index.txt: line 2: identity label 99 out of range"),
])
def test_face_zip_malformed_lines_name_the_line(tmp_path, line, message):
    folder = write_face_zip(tmp_path / "train.zip", in_folder=True)
    lines = (folder / "data/index.txt").read_text().splitlines()
    lines[1] = line
    (folder / "data/index.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(FairError, match=message):
        load(FaceZip, folder)


def test_face_zip_missing_member_names_the_archive_and_line(tmp_path):
    archive = write_face_zip(tmp_path / "train.zip", skip=(2, 4))
    with pytest.raises(FairError, match=r"train.zip:data/index.txt: line 5: image not found: .*train.zip:data/img/0000004.jpg "
                                        r"\(1 of 6 images missing\)"):
        load(FaceZip, archive)


def test_two_workers_decode_both_datasets(tmp_path):
    rfw = load(RFW, zip_tree(write_rfw(tmp_path / "test"), tmp_path / "rfw.zip", "test/"), in_memory=True)
    face_zip = load(FaceZip, write_face_zip(tmp_path / "train.zip"))
    for dataset in (rfw, face_zip):
        expected = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        batches = list(DataLoader(dataset, batch_size=3, num_workers=2))
        assert torch.equal(torch.cat([b["image"] for b in batches]), expected)
        assert torch.equal(torch.cat([b["identity"] for b in batches]), dataset.identities)
        assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(len(dataset)))
