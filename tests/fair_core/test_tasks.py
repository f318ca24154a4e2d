"""The task seam: specs pair a task with data, models, methods and metrics that serve it, and a
third-party package can add a task through the `fair` entry point without touching core."""

import json
import os
import subprocess
import textwrap

import pytest
from test_cli_errors import assert_one_line_error

from conftest import FAIR, small_spec
from fair_core.plugins import get_registry

SEGMENTATION = {"task": "segmentation",
                "data": {"name": "synthetic_segmentation", "params": {"train_size": 16, "test_size": 8}},
                "model": {"name": "small_encoder_decoder", "params": {"width": 4}}}


def fair(*args, env=None):
    return subprocess.run([*FAIR, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("change,needles", [
    ({"method": {"name": "uw"}},
     ["method.name: uw supports the classification task, not segmentation", "methods for segmentation: erm"]),
    ({"model": {"name": "small_cnn"}},
     ["model.name: small_cnn is a model for the classification and verification task, not segmentation",
      "models for segmentation: fpn, small_encoder_decoder"]),
    ({"data": {"name": "synthetic"}}, ["task: the dataset synthetic serves the classification task, not segmentation"]),
    ({"task": "detection"}, ["task: unknown task 'detection'", "available: classification, segmentation, verification"]),
    ({"eval": {"metrics": ["mIoU", "spd"]}}, ["eval.metrics: 'spd' is a classification metric", "segmentation metrics:", "mIoU"]),
    ({"eval": {"params": {"flip": True}}}, ["eval.params.flip", "unknown field", "allowed: per_image"]),
])
def test_a_spec_whose_parts_do_not_serve_its_task_exits_2_with_one_line(tmp_path, write_spec, change, needles):
    spec = small_spec(tmp_path / "out", **SEGMENTATION)
    spec.update(change)
    assert_one_line_error(fair("run", str(write_spec(spec))), *needles)
    assert not (tmp_path / "out").exists()


def test_verification_eval_params_are_checked(tmp_path, write_spec):
    spec = small_spec(tmp_path / "out", task="verification", data={"name": "synthetic_faces", "params": {}},
                      model={"name": "small_embedding_cnn"}, eval={"params": {"fpr": 2}})
    assert_one_line_error(fair("run", str(write_spec(spec))), "eval.params.fpr", "less than 1")


def test_the_task_defaults_to_the_dataset_s_own():
    from fair_core.runner import resolve
    from fair_core.spec import parse_spec

    assert resolve(parse_spec(small_spec("unused"))).task.name == "classification"
    run = resolve(parse_spec({k: v for k, v in SEGMENTATION.items() if k != "task"}))
    assert run.task.name == "segmentation"
    assert {m.task for m in run.metrics} == {"segmentation"} and "mIoU" in {m.name for m in run.metrics}


def test_fair_list_shows_tasks_and_the_task_of_every_metric_and_method():
    result = subprocess.run([*FAIR, "list"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"}, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {tuple(cell.strip() for cell in line.split("│")[1:6]) for line in result.stdout.splitlines() if "│" in line}
    names = {(r[0], r[1]): r[4] for r in rows}
    assert names[("task", "segmentation")] == "" and names[("task", "verification")] == ""
    assert names[("metric", "mIoU")] == "segmentation" and names[("metric", "spd")] == "classification"
    assert names[("metric", "tpr_gap")] == "verification"
    assert names[("method", "erm")] == "any" and names[("method", "uw")] == "classification"
    assert names[("model", "small_encoder_decoder")] == "segmentation"


PLUGIN = '''
"""A third-party task: regress the mean brightness of an image (not part of fair-core)."""
import torch
import torch.nn.functional as F
from fair_core import DatasetBuilder, SplitData, hookimpl
from fair_core.metrics import Metric
from fair_core.models import SmallCNN
from fair_core.tasks import Evaluation, Task
from fair_core.tasks.base import metric_sections, table_rows
from fair_core.tasks.classification import ClassifierModel


class Brightness(DatasetBuilder):
    splits = ("train", "test")
    default_target = "level"
    default_sensitive = ("half",)
    tasks = ("regression",)

    def read_split(self, split):
        g = torch.Generator().manual_seed(len(split))
        level = torch.randint(0, 4, (64,), generator=g)
        images = (level.view(-1, 1, 1, 1) / 4 + 0.1 * torch.rand(64, 3, 16, 16, generator=g)).clamp(0, 1)
        half = torch.arange(64) % 2
        return SplitData(images, {"level": level, "half": half}, {"level": ("0", "1", "2", "3"), "half": ("even", "odd")})


class Regressor(SmallCNN):
    tasks = ("regression",)


class RegressionEvaluation(Evaluation):
    def __init__(self, task, dataset):
        super().__init__(task, dataset)
        self.rows = []

    def outputs(self, method, model, batch):
        return method.predict(model, batch["image"])[:, 0], batch["target"].float(), batch["group"]

    def update(self, gathered):
        self.rows.append(torch.stack([t.float().cpu() for t in gathered], 1))

    def state(self):
        return torch.cat(self.rows)


def mae(rows):
    return (rows[:, 0] - rows[:, 1]).abs().mean()


def group_mae(rows):
    return torch.stack([(rows[rows[:, 2] == g, 0] - rows[rows[:, 2] == g, 1]).abs().mean() for g in (0, 1)])


class RegressionTask(Task):
    name = "regression"
    model_class = ClassifierModel

    def loss(self, outputs, batch, info):
        return F.mse_loss(outputs[:, 0], batch["target"].float())

    def evaluation(self, dataset):
        return RegressionEvaluation(self, dataset)

    def summarize(self, evaluation, metrics, eval_spec, seed):
        sections = metric_sections(evaluation.state(), metrics)
        groups = table_rows("group", evaluation.dataset.info.group_names, {}, sections["group_columns"])
        return {"overall": sections["overall"], "groups": groups, "fairness": sections["fairness"]}


@hookimpl
def fair_register_tasks(register):
    register("regression", RegressionTask)


@hookimpl
def fair_register_datasets(register):
    register("brightness", Brightness)


@hookimpl
def fair_register_models(register):
    register("regressor", Regressor)


@hookimpl
def fair_register_metrics(register):
    register("mae", Metric("mae", mae, "overall", False, "mean absolute error", task="regression"))
    register("group_mae", Metric("group_mae", group_mae, "groups", False, "MAE per group", task="regression", column="mae"))
'''


def test_a_third_party_task_runs_through_the_same_runner(tmp_path, write_spec):
    dist = tmp_path / "fair_regression-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fair-regression\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fair]\nregression = fair_regression_plugin\n")
    (tmp_path / "fair_regression_plugin.py").write_text(textwrap.dedent(PLUGIN))
    spec = small_spec(tmp_path / "out", data={"name": "brightness", "params": {}}, model={"name": "regressor", "params": {"width": 4}},
                      train={"epochs": 2, "batch_size": 16}, eval={"bootstrap": 0})
    result = fair("run", str(write_spec(spec)), env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["packages"]["task"] == "fair-regression"
    assert set(metrics["overall"]) == {"mae"} and [g["group"] for g in metrics["groups"]] == ["even", "odd"]
    assert all(g["mae"] >= 0 for g in metrics["groups"])
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "regression" not in get_registry().entries["tasks"]  # nothing leaked into this process


def test_data_check_counts_pixels_for_segmentation_and_identities_for_verification(tmp_path, write_spec):
    seg = fair("data", "check", str(write_spec(small_spec(tmp_path / "out", **SEGMENTATION), "seg.json")))
    assert seg.returncode == 0, seg.stderr
    assert "class (pixels)" in seg.stdout and "background" in seg.stdout and "train: 16 images" in seg.stdout
    faces = small_spec(tmp_path / "out", task="verification", model={"name": "small_embedding_cnn"},
                       data={"name": "synthetic_faces", "params": {"train_identities": 20, "eval_identities": 3}})
    result = fair("data", "check", str(write_spec(faces, "faces.json")))
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.count("│") == 4}
    assert rows["identities"] == ["3", "3"]  # the test split: 3 identities a group
