"""Iteration-based training (``train.max_steps``), the poly scheduler, padded segmentation batches
and sliding-window inference, against expectations computed by hand."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from conftest import small_spec
from fair_core import FairError
from fair_core import metrics as M
from fair_core.checkpoint import load_checkpoint
from fair_core.data import NoParams, Preprocessing, SplitData
from fair_core.hub import from_pretrained
from fair_core.models import ModelBuilder, Segmenter
from fair_core.plugins import Entry, Registry, get_registry
from fair_core.runner import run, schedule_factor
from fair_core.spec import TrainSpec, parse_spec, validate_params
from fair_core.tasks import SegmentationTask
from fair_core.tasks.segmentation import SegmentationDataset, SegmentationParams, pad_collate, slide_logits
from fair_data.synthetic_segmentation import SyntheticSegmentation
from fair_methods.erm import ERM

IGNORE = 255
LR = 0.002


def run_spec(spec, **kwargs):
    return run(parse_spec(spec), **kwargs)


def log_records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def registry_with(**entries):
    """A copy of the installed registry with ``kind=(name, obj)`` entries added or replaced
    (the cached global registry is left untouched)."""
    base = get_registry()
    registry = Registry(entries={kind: dict(named) for kind, named in base.entries.items()})
    for kind, (name, obj) in entries.items():
        registry.entries[kind][name] = Entry(kind, name, obj, "tests", "0")
    return registry


# --------------------------------------------------------------------------- schedule_factor
def test_poly_factor_matches_mmseg_poly_lr_by_hand():
    f = schedule_factor(TrainSpec(scheduler="poly", power=0.9, min_lr_factor=0.0), 10)
    assert f(0) == pytest.approx(1.0, abs=1e-12)
    assert f(5) == pytest.approx(0.5358867312681466, abs=1e-12)  # 0.5 ** 0.9 = 2 ** -0.9
    assert f(10) == pytest.approx(0.0, abs=1e-12)
    assert f(12) == pytest.approx(0.0, abs=1e-12)  # past the end: the minimum, not a complex number

    f = schedule_factor(TrainSpec(scheduler="poly", power=0.9, min_lr_factor=0.5), 10)
    assert f(0) == pytest.approx(1.0, abs=1e-12)
    assert f(5) == pytest.approx(0.7679433656340733, abs=1e-12)  # 0.5 * 0.5 ** 0.9 + 0.5
    assert f(10) == pytest.approx(0.5, abs=1e-12)

    f = schedule_factor(TrainSpec(scheduler="poly", power=2.0, min_lr_factor=0.0), 10)
    assert f(5) == pytest.approx(0.25, abs=1e-12)
    assert f(8) == pytest.approx(0.04, abs=1e-12)

    f = schedule_factor(TrainSpec(scheduler="poly", power=0.9, min_lr_factor=1.0), 160_000)
    assert [f(t) for t in (0, 1, 80_000, 159_999, 160_000)] == pytest.approx([1.0] * 5, abs=1e-12)


def test_multistep_milestones_are_fractions_of_the_step_total_and_cosine_halves():
    f = schedule_factor(TrainSpec(scheduler="multistep", milestones=[0.5, 0.75], gamma=0.1), 1000)
    assert [f(t) for t in (0, 499, 500, 749, 750, 999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01], abs=1e-12)
    f = schedule_factor(TrainSpec(scheduler="multistep", milestones=[0.3, 0.6], gamma=0.5), 10)
    assert [f(t) for t in (2, 3, 5, 6)] == pytest.approx([1, 0.5, 0.5, 0.25], abs=1e-12)

    f = schedule_factor(TrainSpec(scheduler="cosine"), 20)
    assert (f(0), f(10), f(20)) == pytest.approx((1.0, 0.5, 0.0), abs=1e-12)
    assert schedule_factor(TrainSpec(scheduler="none"), 20)(13) == 1.0


# --------------------------------------------------------------------------- max_steps runs
def classification_spec(out, **train):
    """40 training images in batches of 16: 3 steps per pass (16, 16, 8)."""
    return small_spec(out, data={"name": "synthetic", "params": {"train_size": 40, "val_size": 8, "test_size": 16, "image_size": 16}},
                      model={"name": "small_cnn", "params": {"width": 4}},
                      train={"epochs": 1, "max_steps": 7, "batch_size": 16, "lr": LR, "seed": 0, "scheduler": "poly",
                             "power": 0.9, "min_lr_factor": 0.1, "log_every": 2, **train},
                      eval={"bootstrap": 0})


@pytest.fixture(scope="module")
def max_steps_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("steps") / "out"
    return out, run_spec(classification_spec(out))


def test_max_steps_runs_exactly_that_many_steps_over_partial_passes(max_steps_run):
    out, result = max_steps_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["timing"]["steps_timed"] == 7 and result["timing"]["steps_timed"] == 7
    assert metrics["timing"]["epochs_timed"] == 3  # ceil(7 / 3); train.epochs (1) is not used
    assert metrics["timing"]["seconds_per_step"] > 0
    records = log_records(out)
    epochs = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["step"] for r in epochs] == [3, 6, 7]  # the last pass stops after 1 of its 3 batches
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6]  # every log_every=2 steps, across passes
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    assert checkpoint["global_step"] == 7 and checkpoint["epoch"] == 2 and checkpoint["post_trained"] is True


def test_poly_lr_with_max_steps_steps_after_every_optimisation_step(max_steps_run):
    out, _ = max_steps_run
    lrs = [r["lr"] for r in log_records(out) if "epoch" in r]
    # lr * ((1 - 0.1) (1 - t / 7) ** 0.9 + 0.1) after t = 3, 6, 7 steps
    # (4/7) ** 0.9 = 0.6043183144790013, (1/7) ** 0.9 = 0.1735448634341524
    expected = [LR * (0.9 * 0.6043183144790013 + 0.1), LR * (0.9 * 0.1735448634341524 + 0.1), LR * 0.1]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs == pytest.approx([0.0012877729660622, 0.00051238075418147, 0.0002], rel=1e-9)


def test_without_max_steps_the_poly_scheduler_counts_epochs(tmp_path):
    out = tmp_path / "out"
    spec = classification_spec(out, epochs=2, max_steps=None)
    result = run_spec(spec)
    assert result["timing"]["steps_timed"] == 6 and result["timing"]["epochs_timed"] == 2
    lrs = [r["lr"] for r in log_records(out) if "epoch" in r]
    # after epoch 1 of 2: 0.9 * 0.5 ** 0.9 + 0.1; after epoch 2: the minimum
    assert lrs == pytest.approx([LR * (0.9 * 0.5358867312681466 + 0.1), LR * 0.1], rel=1e-9)


class Stopped(Exception):
    pass


class StopInSecondPass(ERM):
    """ERM that stops the run during the second pass (step 5 of 7), after the first pass's checkpoint."""

    def training_step(self, model, batch, trainer):
        if trainer.global_step == 4:
            raise Stopped
        return super().training_step(model, batch, trainer)


def test_a_max_steps_run_stopped_in_its_second_pass_resumes_to_the_same_results(tmp_path):
    spec = classification_spec(None, optimizer="sgd", momentum=0.9, lr=0.05, seed=3)

    def at(out):
        return {**spec, "output_dir": str(out)}

    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    run_spec(at(reference))
    with pytest.raises(Stopped):
        run_spec(at(stopped), registry=registry_with(methods=("erm", StopInSecondPass)))
    assert not (stopped / "metrics.json").exists()
    checkpoint = load_checkpoint(stopped / "checkpoint.safetensors")
    assert (checkpoint["epoch"], checkpoint["global_step"], checkpoint["post_trained"]) == (0, 3, False)

    resumed = run_spec(at(stopped), resume=True)
    assert resumed["timing"]["steps_timed"] == 4 and resumed["timing"]["epochs_timed"] == 2

    def sections(out):
        metrics = json.loads((out / "metrics.json").read_text())
        return json.dumps(metrics["overall"]), json.dumps(metrics["fairness"]), json.dumps(metrics["groups"])

    assert sections(stopped) == sections(reference)
    assert (stopped / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    epochs = [(r["epoch"], r["step"], r["lr"]) for r in log_records(stopped) if "epoch" in r]
    assert epochs == [(r["epoch"], r["step"], r["lr"]) for r in log_records(reference) if "epoch" in r]
    assert [e[1] for e in epochs] == [3, 6, 7]


# --------------------------------------------------------------------------- pad_collate
def test_pad_collate_pads_bottom_right_and_records_sizes():
    first = {"image": torch.arange(1.0, 106.0).reshape(3, 5, 7), "mask": torch.arange(35).reshape(5, 7) % 3,
             "group": torch.tensor(1), "index": 4}
    second = {"image": torch.arange(1.0, 109.0).reshape(3, 4, 9), "mask": torch.arange(36).reshape(4, 9) % 4,
              "group": torch.tensor(0), "index": 7}
    batch = pad_collate([first, second], IGNORE)
    assert batch["image"].shape == (2, 3, 5, 9) and batch["mask"].shape == (2, 5, 9)
    assert batch["mask"].dtype == torch.long
    assert batch["image_size"].tolist() == [[5, 7], [4, 9]] and batch["mask_size"].tolist() == [[5, 7], [4, 9]]
    assert batch["group"].tolist() == [1, 0] and batch["index"].tolist() == [4, 7]
    assert torch.equal(batch["image"][0, :, :5, :7], first["image"])
    assert torch.equal(batch["image"][1, :, :4, :9], second["image"])
    assert torch.equal(batch["mask"][0, :5, :7], first["mask"]) and torch.equal(batch["mask"][1, :4, :9], second["mask"])
    # padding: image 0 gets 2 columns (5 x 2 pixels), image 1 one row (1 x 9), bottom-right
    assert int((batch["image"] == 0).sum()) == 3 * (10 + 9)
    assert bool((batch["image"][0, :, :, 7:] == 0).all()) and bool((batch["image"][1, :, 4:, :] == 0).all())
    assert int((batch["mask"] == IGNORE).sum()) == 10 + 9
    assert bool((batch["mask"][0, :, 7:] == IGNORE).all()) and bool((batch["mask"][1, 4, :] == IGNORE).all())


def test_pad_collate_stacks_items_of_one_size_without_size_keys():
    items = [{"image": torch.full((3, 4, 4), float(i)), "mask": torch.full((4, 4), i, dtype=torch.long),
              "group": torch.tensor(i), "index": i} for i in range(3)]
    batch = pad_collate(items, IGNORE)
    assert set(batch) == {"image", "mask", "group", "index"}
    assert torch.equal(batch["image"], torch.stack([item["image"] for item in items]))
    assert torch.equal(batch["mask"], torch.stack([item["mask"] for item in items]))

    # an image resized without its mask (2x): the sizes differ from the masks', and are recorded
    batch = pad_collate([{"image": torch.rand(3, 8, 10), "mask": torch.zeros(4, 5, dtype=torch.long), "group": 0, "index": 0},
                         {"image": torch.rand(3, 6, 6), "mask": torch.zeros(3, 3, dtype=torch.long), "group": 0, "index": 1}],
                        IGNORE)
    assert batch["image"].shape == (2, 3, 8, 10) and batch["mask"].shape == (2, 4, 5)
    assert batch["image_size"].tolist() == [[8, 10], [6, 6]] and batch["mask_size"].tolist() == [[4, 5], [3, 3]]


# --------------------------------------------------------------------------- padded evaluation and loss
K = 4


class Predict:
    """A method's inference rule: the model's output."""

    def predict(self, model, images):
        return model(images)


def pointwise_model():
    """Per-pixel logits at the input resolution: the padding cannot change an image's own logits."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, K, 1)
    with torch.no_grad():
        model.weight.mul_(8)
    return model.eval()


def toy_dataset(image_sizes, mask_sizes, pair_transform=None):
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, *size, generator=generator) for size in image_sizes]
    masks = []
    for size in mask_sizes:
        mask = torch.randint(0, K, size, generator=generator)
        masks.append(mask.masked_fill(torch.rand(size, generator=generator) < 0.2, IGNORE))
    n = len(images)
    data = SplitData(images=images, attributes={"light": torch.arange(n) % 2}, values={"light": ("a", "b")}, masks=masks,
                     mask_classes=tuple("klmn"), ignore_index=IGNORE)
    info = SegmentationDataset.describe(data, "toy", None, ("light",), Preprocessing(16))
    return SegmentationDataset(data, info, pair_transform=pair_transform)


def confusion_by_hand(model, image, mask):
    """The confusion ``(K, K)`` of one image: logits resized to the mask (bilinear), counted pixel by pixel."""
    logits = model(image[None])
    if tuple(logits.shape[-2:]) != tuple(mask.shape):
        logits = F.interpolate(logits, size=tuple(mask.shape), mode="bilinear", align_corners=False)
    predicted = logits.argmax(1)[0]
    confusion = torch.zeros(K, K, dtype=torch.long)
    for y, p in zip(mask.reshape(-1).tolist(), predicted.reshape(-1).tolist(), strict=True):
        if y != IGNORE:
            confusion[y, p] += 1
    return confusion


@torch.no_grad()
def test_evaluation_of_a_padded_batch_equals_evaluation_image_by_image():
    sizes = [(6, 8), (9, 5), (4, 4), (7, 7), (9, 8)]
    dataset = toy_dataset(sizes, sizes)
    task, model = SegmentationTask(), pointwise_model()
    items = [dataset[i] for i in range(len(dataset))]
    batch = task.collate(items, dataset.info)
    assert "image_size" in batch and batch["image"].shape == (5, 3, 9, 8)
    padded = task.evaluation(dataset).outputs(Predict(), model, batch)
    one_by_one = [task.evaluation(dataset).outputs(Predict(), model, task.collate([item], dataset.info)) for item in items]
    expected = torch.stack([confusion_by_hand(model, item["image"], item["mask"]) for item in items])
    assert len({int(p) for c in expected for p in c.sum(0).nonzero().flatten()}) > 1, "the predictions must vary"
    assert torch.equal(padded[0], expected)
    assert torch.equal(torch.cat([o[0] for o in one_by_one]), expected)
    assert padded[1].tolist() == [0, 1, 0, 1, 0] and padded[2].tolist() == [0, 1, 2, 3, 4]

    evaluation = task.evaluation(dataset)
    evaluation.update(padded)
    assert torch.equal(evaluation.confusion[0], expected[0] + expected[2] + expected[4])
    assert torch.equal(evaluation.confusion[1], expected[1] + expected[3])
    labelled = [int((item["mask"] != IGNORE).sum()) for item in items]
    assert evaluation.per_image()[:, 2].tolist() == labelled


def upsample_image(image, mask):
    """mmseg's test pipeline: the image resized (here 2x), the mask kept."""
    return F.interpolate(image[None], scale_factor=2, mode="bilinear", align_corners=False)[0], mask


@torch.no_grad()
def test_an_image_resized_without_its_mask_is_evaluated_at_the_mask_size():
    masks = [(5, 6), (4, 4), (3, 7)]
    dataset = toy_dataset(masks, masks, pair_transform=upsample_image)
    task, model = SegmentationTask(), pointwise_model()
    items = [dataset[i] for i in range(len(dataset))]
    assert [tuple(item["image"].shape[-2:]) for item in items] == [(10, 12), (8, 8), (6, 14)]
    expected = torch.stack([confusion_by_hand(model, item["image"], item["mask"]) for item in items])
    labelled = [int((item["mask"] != IGNORE).sum()) for item in items]
    assert expected.sum((1, 2)).tolist() == labelled

    single = task.evaluation(dataset).outputs(Predict(), model, task.collate(items[:1], dataset.info))[0]
    assert single.shape == (1, K, K) and int(single.sum()) == labelled[0]  # 5 x 6 mask pixels, not 10 x 12
    assert torch.equal(single[0], expected[0])
    padded = task.evaluation(dataset).outputs(Predict(), model, task.collate(items, dataset.info))[0]
    assert padded.sum((1, 2)).tolist() == labelled
    assert torch.equal(padded, expected)


def test_the_loss_of_a_padded_batch_is_the_pixel_weighted_mean_of_the_images_losses():
    image_sizes, mask_sizes = [(6, 8), (9, 5), (8, 10)], [(6, 8), (9, 5), (4, 5)]  # the last image 2x its mask
    dataset = toy_dataset(mask_sizes, mask_sizes)
    generator = torch.Generator().manual_seed(2)
    items = [{**dataset[i], "image": torch.rand(3, *size, generator=generator)} for i, size in enumerate(image_sizes)]
    items[2]["mask"] = torch.full((4, 5), IGNORE).index_fill_(1, torch.tensor([0]), 0)  # 4 labelled pixels: weighting matters
    task = SegmentationTask()
    batch = task.collate(items, dataset.info)
    outputs = torch.randn(3, K, 9, 10, generator=generator)  # logits at the padded input size
    loss = task.loss(outputs, batch, dataset.info)

    sums, counts = [], []
    for i, ((h, w), mask) in enumerate(zip(image_sizes, [item["mask"] for item in items], strict=True)):
        own = outputs[i : i + 1, :, :h, :w]
        if (h, w) != tuple(mask.shape):
            own = F.interpolate(own, size=tuple(mask.shape), mode="bilinear", align_corners=False)
        log_p = own[0].log_softmax(0)
        valid = mask != IGNORE
        sums.append(-log_p.gather(0, mask.clamp_max(K - 1)[None])[0][valid].sum())
        counts.append(int(valid.sum()))
    assert counts[2] == 4
    expected = sum(sums) / sum(counts)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    mean_of_means = sum(s / c for s, c in zip(sums, counts, strict=True)) / 3
    assert float(mean_of_means) != pytest.approx(float(expected), rel=1e-3)


class VariedSegmentation(SyntheticSegmentation):
    """Synthetic scenes cropped to sizes 16..24 that vary image by image; for evaluation the
    image is resized 2x and the mask kept, as mmseg's test pipeline."""

    def read_split(self, split):
        data = super().read_split(split)
        sizes = [(16 + (5 * i) % 9, 16 + (7 * i) % 9) for i in range(len(data.masks))]
        data.images = [data.images[i][:, :h, :w] for i, (h, w) in enumerate(sizes)]
        data.masks = [data.masks[i][:h, :w] for i, (h, w) in enumerate(sizes)]
        return data

    def pair_transform(self, train):
        return super().pair_transform(train) if train else upsample_image


class Pointwise(ModelBuilder):
    """A 1x1 convolution: each pixel's logits depend on that pixel alone."""

    Params = NoParams
    tasks = ("segmentation",)

    def build(self, num_classes):
        return Segmenter(nn.Identity(), nn.Conv2d(3, num_classes, 1), num_classes)


def test_runs_with_eval_batches_of_one_and_of_four_images_of_different_sizes_agree(tmp_path):
    registry = registry_with(datasets=("varied_segmentation", VariedSegmentation), models=("pointwise", Pointwise))

    def spec(out, eval_batch):
        return small_spec(out, task="segmentation",
                          data={"name": "varied_segmentation", "sensitive": ["lighting"],
                                "params": {"train_size": 24, "val_size": 4, "test_size": 10, "image_size": 24}},
                          model={"name": "pointwise", "params": {}},
                          train={"epochs": 1, "batch_size": 8, "lr": 0.01, "seed": 0},
                          eval={"batch_size": eval_batch, "bootstrap": 0})

    ones, fours = tmp_path / "ones", tmp_path / "fours"
    run_spec(spec(ones, 1), registry=registry)
    run_spec(spec(fours, 4), registry=registry)

    def sections(out):
        metrics = json.loads((out / "metrics.json").read_text())
        return metrics["overall"], metrics["groups"], metrics["classes"], metrics["fairness"]

    assert sections(fours) == sections(ones)
    assert (fours / "per_image.csv").read_text() == (ones / "per_image.csv").read_text()
    test = VariedSegmentation(VariedSegmentation.Params(train_size=24, val_size=4, test_size=10, image_size=24)).read_split("test")
    labelled = [int((mask.long() != IGNORE).sum()) for mask in test.masks]  # at the mask size, not the 2x image size
    rows = list(csv.DictReader((fours / "per_image.csv").open()))
    assert [int(r["index"]) for r in rows] == list(range(10)) and [int(r["pixels"]) for r in rows] == labelled
    assert sections(fours)[0]["pixels"] == sum(labelled) and sections(fours)[0]["n"] == 10


# --------------------------------------------------------------------------- slide inference
def coordinate_image(height, width):
    """``(1, 3, H, W)``: channel 0 the row, channel 1 the column of each pixel."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float), torch.arange(width, dtype=torch.float), indexing="ij")
    return torch.stack([ys, xs, torch.zeros_like(ys)])[None]


def recording_forward(windows, half_resolution=True):
    """Logits at half the crop's resolution: channel 0 the crop's index, channel 1 one on the first crop only."""

    def forward(crop):
        index = len(windows)
        windows.append((int(crop[0, 0, 0, 0]), int(crop[0, 1, 0, 0]), tuple(crop.shape[-2:])))
        h, w = (crop.shape[-2] // 2, crop.shape[-1] // 2) if half_resolution else crop.shape[-2:]
        return torch.stack([torch.full((h, w), float(index)), torch.full((h, w), float(index == 0))])[None]

    return forward


def test_slide_windows_overlap_and_are_averaged_as_mmseg():
    windows = []
    logits = slide_logits(recording_forward(windows), coordinate_image(10, 10), crop_size=6, stride=4)
    # mmseg: grids = max(10 - 6 + 4 - 1, 0) // 4 + 1 = 2 per axis; windows start at 0 and min(4, 10 - 6) = 4
    assert windows == [(0, 0, (6, 6)), (0, 4, (6, 6)), (4, 0, (6, 6)), (4, 4, (6, 6))]
    assert logits.shape == (1, 2, 10, 10)
    covering = [[0]] * 4 + [[0, 1]] * 2 + [[1]] * 4  # window rows (columns) covering each row (column)
    expected = torch.tensor([[sum(2 * r + c for r in covering[y] for c in covering[x]) / (len(covering[y]) * len(covering[x]))
                              for x in range(10)] for y in range(10)])
    torch.testing.assert_close(logits[0, 0], expected, rtol=0, atol=1e-6)
    assert (float(logits[0, 0, 0, 9]), float(logits[0, 0, 9, 0]), float(logits[0, 0, 9, 9])) == (1.0, 2.0, 3.0)
    assert float(logits[0, 0, 5, 5]) == pytest.approx(1.5) and float(logits[0, 0, 5, 0]) == pytest.approx(1.0)
    # the first window's share of each pixel: 1 / (crops covering it): the 1 / 2 / 4 pattern
    first = logits[0, 1]
    assert bool((first[:4, :4] == 1).all()) and bool((first[4:6, :4] == 0.5).all()) and bool((first[:4, 4:6] == 0.5).all())
    assert bool((first[4:6, 4:6] == 0.25).all()) and bool((first[6:] == 0).all()) and bool((first[:, 6:] == 0).all())


def test_slide_last_window_is_flush_with_the_border():
    windows = []
    logits = slide_logits(recording_forward(windows, half_resolution=False), coordinate_image(11, 7), crop_size=6, stride=4)
    # rows: (11 - 6 + 3) // 4 + 1 = 3 windows at 0, 4 and 11 - 6 = 5; columns: (7 - 6 + 3) // 4 + 1 = 2 at 0 and 1
    assert [(y, x) for y, x, _ in windows] == [(0, 0), (0, 1), (4, 0), (4, 1), (5, 0), (5, 1)]
    assert all(size == (6, 6) for *_, size in windows)
    assert float(logits[0, 0, 10, 6]) == 5.0 and float(logits[0, 0, 0, 0]) == 0.0
    assert float(logits[0, 0, 5, 3]) == pytest.approx(2.5)  # covered by all six windows
    assert float(logits[0, 0, 4, 0]) == pytest.approx(1.0)  # windows 0 and 2
    image = torch.rand(2, 3, 11, 7)
    torch.testing.assert_close(slide_logits(lambda x: x, image, 6, 4), image, rtol=0, atol=1e-6)


@torch.no_grad()
def test_slide_with_a_crop_as_large_as_the_image_is_one_whole_image_call():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    calls = []

    def forward(x):
        calls.append(tuple(x.shape))
        return conv(x)

    for height, width, crop in ((10, 12, 16), (12, 12, 12)):
        calls.clear()
        image = torch.rand(2, 3, height, width)
        logits = slide_logits(forward, image, crop_size=crop, stride=8)
        assert calls == [(2, 3, height, width)]
        assert torch.equal(logits, conv(image))


def test_stride_larger_than_the_crop_is_refused():
    with pytest.raises(ValidationError, match=r"stride \(5\).*crop_size \(4\)"):
        SegmentationParams(inference="slide", crop_size=4, stride=5)
    with pytest.raises(FairError, match=r"eval\.params.*stride \(5\).*crop_size \(4\)"):
        validate_params(SegmentationParams, {"inference": "slide", "crop_size": 4, "stride": 5}, "eval.params")
    assert SegmentationParams(inference="slide", crop_size=4, stride=4).stride == 4
    assert SegmentationParams(inference="whole", crop_size=4, stride=5).inference == "whole"  # unused without slide


SLIDE = {"inference": "slide", "crop_size": 16, "stride": 8}


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("slide") / "out"
    spec = small_spec(out, task="segmentation",
                      data={"name": "synthetic_segmentation", "sensitive": ["lighting"],
                            "params": {"train_size": 32, "val_size": 4, "test_size": 6, "image_size": 24}},
                      model={"name": "small_encoder_decoder", "params": {"width": 4}},
                      train={"epochs": 2, "batch_size": 8, "lr": 0.01, "seed": 0},
                      eval={"batch_size": 4, "bootstrap": 0, "params": SLIDE})
    run_spec(spec)
    builder = SyntheticSegmentation(SyntheticSegmentation.Params(**spec["data"]["params"]))
    test = builder.load("test", None, ["lighting"], task=SegmentationTask())
    return out, test


@torch.no_grad()
def test_a_slide_run_saves_a_model_that_segments_by_sliding_windows(slide_run):
    out, test = slide_run
    assert json.loads((out / "config.json").read_text())["inference"] == {"mode": "slide", "crop_size": 16, "stride": 8}
    model = from_pretrained(out)
    images = torch.stack(list(test.split.images))
    inputs = model.preprocess(images)
    slide = torch.softmax(slide_logits(model, inputs, 16, 8), dim=1)
    whole = torch.softmax(model(inputs), dim=1)
    proba = model.segment_proba(images)
    torch.testing.assert_close(proba, slide, rtol=0, atol=1e-6)
    assert not torch.allclose(proba, whole, atol=1e-4), "slide and whole-image inference must differ here"

    metrics = json.loads((out / "metrics.json").read_text())
    masks = torch.stack([test[i]["mask"] for i in range(len(test))])
    confusion = M.segmentation_confusion(model.segment(images), masks, 7, test.groups, 2, ignore_index=IGNORE)
    assert metrics["overall"]["aAcc"] == pytest.approx(M.pixel_accuracy(confusion.sum(0)).item(), abs=1e-12)
    assert metrics["overall"]["mIoU"] == pytest.approx(M.mean_iou(confusion.sum(0)).item(), abs=1e-12)


@torch.no_grad()
def test_slide_segment_returns_masks_at_the_input_size(slide_run):
    out, _ = slide_run
    model = from_pretrained(out)
    images = torch.rand(2, 3, 32, 40)
    assert model.segment(images).shape == (2, 32, 40)


@pytest.mark.parametrize("scheduler", ["none", "cosine", "multistep", "poly"])
def test_a_stage_without_loop_training_keeps_the_lr(scheduler):
    # fdr fits its last layer itself: its loop stage has 0 epochs (cosine divided by 0 before)
    assert schedule_factor(TrainSpec(scheduler=scheduler), 0)(0) == 1.0
