"""Segmentation and verification runs through the one runner: outputs, two processes against one,
resume after SIGKILL, from_pretrained, fair compare and the model card."""

import csv
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAIR, small_spec
from fair_core import metrics as M
from fair_core.checkpoint import load_checkpoint
from fair_core.hub import from_pretrained
from fair_core.plugins import get_registry
from fair_core.tasks import EmbedderModel, EmbeddingSet, SegmentationTask, SegmenterModel, VerificationTask
from fair_core.tasks.verification import VerificationParams

ENV = {**os.environ, "TQDM_DISABLE": "1"}


def segmentation_spec(out, **sections):
    return small_spec(out, **{"task": "segmentation",
                              "data": {"name": "synthetic_segmentation", "sensitive": ["lighting"],
                                       "params": {"train_size": 96, "test_size": 21, "image_size": 24}},
                              "model": {"name": "small_encoder_decoder", "params": {"width": 4}},
                              "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "seed": 0},
                              "eval": {"batch_size": 4, "bootstrap": 0}, **sections})


def faces_spec(out):
    return small_spec(out, task="verification",
                      data={"name": "synthetic_faces", "params": {"train_identities": 40, "eval_identities": 11, "eval_images": 3,
                                                                  "image_size": 24}},
                      model={"name": "small_embedding_cnn", "params": {"width": 4, "embedding_dim": 16}},
                      train={"epochs": 2, "batch_size": 32, "lr": 0.003, "seed": 0},
                      eval={"batch_size": 8, "bootstrap": 0, "params": {"fpr": 0.01, "flip": True, "block_size": 5}})


def fair_run(spec_path, *args):
    result = subprocess.run([*FAIR, "run", str(spec_path), *args], capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def load_split(model, split="test", task=None):
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    builder = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"])
    return builder.load(split, None, data["sensitive"], task=task)


@pytest.fixture(scope="module")
def segmentation_two_processes(tmp_path_factory):
    """21 test images in eval batches of 4 on 2 processes: the last batch is padded by duplicates."""
    out = tmp_path_factory.mktemp("seg") / "out"
    spec_path = out.parent / "spec.json"
    spec_path.write_text(json.dumps(segmentation_spec(out)))
    result = fair_run(spec_path, "--num-processes", "2")
    return out, result


def test_segmentation_run_writes_its_tables_and_per_image_file(segmentation_two_processes):
    out, result = segmentation_two_processes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "segmentation" and not (out / "predictions.csv").exists()
    assert {"aAcc", "mAcc", "mIoU"} <= set(metrics["overall"]) and metrics["overall"]["n"] == 21
    assert {"class_accuracy_std", "worst_class_iou", "group_miou_gap"} <= set(metrics["fairness"])
    assert [c["class"] for c in metrics["classes"]][:2] == ["background", "square"]
    assert set(metrics["classes"][0]) == {"class", "pixels", "accuracy", "iou"}
    assert [g["group"] for g in metrics["groups"]] == ["day", "night"] and sum(g["n"] for g in metrics["groups"]) == 21
    assert sum(c["pixels"] for c in metrics["classes"]) == metrics["overall"]["pixels"]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert sorted(int(r["index"]) for r in rows) == list(range(21))  # every image once, padding dropped
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == {"name": "segmentation", "package": "fair-core"} and config["ignore_index"] == 255
    assert result.stdout.count("by class") == 1 and "mIoU" in result.stdout  # one main process reports


def test_two_process_segmentation_equals_one_process_evaluation_of_the_same_weights(segmentation_two_processes):
    out, _ = segmentation_two_processes
    metrics = json.loads((out / "metrics.json").read_text())
    model = from_pretrained(out)
    assert isinstance(model, SegmenterModel)
    test = load_split(model, task=SegmentationTask())
    images = torch.stack([test.split.images[i] for i in range(len(test))])
    masks = torch.stack([test[i]["mask"] for i in range(len(test))])
    predicted = model.segment(images)  # raw [0, 1] images: the model normalises them itself
    assert predicted.shape == masks.shape
    confusion = M.segmentation_confusion(predicted, masks, 7, test.groups, 2, ignore_index=255)
    assert [c["pixels"] for c in metrics["classes"]] == confusion.sum((0, 2)).tolist()
    assert [g["pixels"] for g in metrics["groups"]] == confusion.sum((1, 2)).tolist()
    expected_iou = M.class_iou(confusion.sum(0)).tolist()
    assert [c["iou"] for c in metrics["classes"]] == pytest.approx([None if v != v else v for v in expected_iou], abs=1e-12)
    assert metrics["overall"]["mIoU"] == pytest.approx(M.mean_iou(confusion.sum(0)).item(), abs=1e-12)
    assert [g["mIoU"] for g in metrics["groups"]] == pytest.approx(M.mean_iou(confusion).tolist(), abs=1e-12)


def test_killed_segmentation_run_resumes_to_the_same_metrics(tmp_path, write_spec):
    spec = segmentation_spec(tmp_path / "x", train={"epochs": 4, "batch_size": 16, "lr": 0.003, "seed": 2, "scheduler": "cosine"})
    spec["data"]["params"]["train_size"] = 480
    spec["model"]["params"]["width"] = 8
    path = write_spec(spec)
    reference = tmp_path / "reference"
    fair_run(path, "--output-dir", str(reference))
    killed = tmp_path / "killed"
    process = subprocess.Popen([*FAIR, "run", str(path), "--output-dir", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while not (killed / "checkpoint.safetensors").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists(), "the run must be killed before it finishes"
    assert load_checkpoint(killed / "checkpoint.safetensors")["epoch"] < 3
    fair_run(path, "--output-dir", str(killed), "--resume")

    def sections(path):
        m = json.loads((path / "metrics.json").read_text())
        return m["overall"], m["groups"], m["classes"], m["fairness"]

    assert sections(killed) == sections(reference)
    assert (killed / "per_image.csv").read_text() == (reference / "per_image.csv").read_text()


@pytest.fixture(scope="module")
def faces_two_processes(tmp_path_factory):
    """33 test images in eval batches of 8 on 2 processes (padded), flip-summed embeddings."""
    out = tmp_path_factory.mktemp("faces") / "out"
    spec_path = out.parent / "spec.json"
    spec_path.write_text(json.dumps(faces_spec(out)))
    fair_run(spec_path, "--num-processes", "2")
    return out


def test_two_process_embeddings_equal_one_process_embeddings_of_the_same_weights(faces_two_processes):
    out = faces_two_processes
    stored = load_file(out / "embeddings.safetensors")
    n = 2 * 11 * 3
    assert stored["index"].tolist() == list(range(n))  # every image once, in split order
    assert stored["embeddings"].shape == (n, 16)
    torch.testing.assert_close(stored["embeddings"].norm(dim=1), torch.ones(n))
    model = from_pretrained(out)
    assert isinstance(model, EmbedderModel)
    test = load_split(model, task=VerificationTask())
    images = torch.stack([test.split.images[i] for i in range(n)])
    embeddings = model.embed(images)  # flip-summed, as the run evaluated (config's eval_flip)
    torch.testing.assert_close(embeddings, stored["embeddings"], atol=1e-5, rtol=0)
    assert not torch.allclose(model.embed(images, flip=False), embeddings, atol=1e-3)
    assert torch.equal(stored["identity"], test.identities) and torch.equal(stored["group"], test.groups)
    assert stored["pairs"].shape[1] == 3 and stored["pairs"].shape[0] == 2 * 11 * 2 * 3

    # every verification metric (operating point, rfw_val on the pair list, the instance-level
    # protocol), computed here on the stored embeddings (equal to one process's, above), is what
    # the two processes reported
    state = EmbeddingSet(stored["embeddings"], test.identities, test.groups, torch.arange(n), test.info.group_names,
                         VerificationParams(fpr=0.01, block_size=5), stored["pairs"])
    metrics = json.loads((out / "metrics.json").read_text())
    checked = 0
    for entry in get_registry().entries["metrics"].values():
        metric = entry.obj
        if metric.task != "verification":
            continue
        value = torch.as_tensor(metric.compute(state), dtype=torch.float64)
        if metric.section == "groups":
            reported = [g[metric.column or metric.name] for g in metrics["groups"]]
        else:
            reported = metrics[metric.section][metric.name]
        expected = [None if v != v else v for v in value.reshape(-1).tolist()]
        assert reported == (pytest.approx(expected, abs=1e-6) if metric.section == "groups"
                            else pytest.approx(expected[0], abs=1e-6)), metric.name
        checked += 1
    assert checked >= 20 and metrics["overall"]["rfw_val_acc"] is not None
    assert [g["identities"] for g in metrics["groups"]] == [11, 11]
    assert metrics["data"]["training_identities"] == 40


def test_compare_and_model_card_speak_each_task(segmentation_two_processes, faces_two_processes):
    seg, faces = segmentation_two_processes[0], faces_two_processes
    result = subprocess.run([*FAIR, "compare", str(seg), str(faces)], capture_output=True, text=True, timeout=300,
                            env={**ENV, "COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "│" in line]
    header = [c.strip() for c in next(line for line in result.stdout.splitlines() if "┃" in line).split("┃")[1:-1]]
    assert header[:4] == ["run", "task", "method", "dataset"] and {"mIoU", "tpr_gap"} <= set(header)
    seg_row = next(line for line in lines if "segmentation" in line)
    assert [c.strip() for c in seg_row.split("│")[1:-1]][header.index("tpr_gap")] == "-"

    card = str(from_pretrained(seg).generate_model_card())
    assert "semantic segmentation model" in card and "### By class" in card and "model.segment(images)" in card
    assert "pipeline_tag: image-segmentation" in card
    card = str(from_pretrained(faces).generate_model_card())
    assert "face recognition model" in card and "model.embed(" in card
    assert "| group | n | identities | tpr | fpr |" in card and "pipeline_tag: image-feature-extraction" in card


def test_fair_predict_segments_and_compares_faces(segmentation_two_processes, faces_two_processes, tmp_path):
    import numpy as np
    from PIL import Image

    def write(image, name):
        path = tmp_path / name
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
        return str(path)

    seg = segmentation_two_processes[0]
    scene = write(load_split(from_pretrained(seg), task=SegmentationTask()).split.images[0], "scene.png")
    result = subprocess.run([*FAIR, "predict", str(seg), scene], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr
    assert "24x24" in result.stdout and "%" in result.stdout

    faces = faces_two_processes
    split = load_split(from_pretrained(faces), task=VerificationTask()).split
    paths = [write(split.images[i], f"face{i}.png") for i in (0, 1)]
    result = subprocess.run([*FAIR, "predict", str(faces), *paths], capture_output=True, text=True, timeout=300,
                            env={**ENV, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "cosine similarity" in result.stdout and result.stdout.count("1.0000") == 2
