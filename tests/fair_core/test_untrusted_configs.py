"""Untrusted configs, specs, checkpoints and metrics: each bound is hit with a small crafted file and
gives one line (exit 2 from the command line) naming the file and the field, in bounded memory."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file

from conftest import FAIR
from fair_core import hub, report
from fair_core.checkpoint import (
    MAX_HEADER_BYTES,
    check_resume_state,
    load_checkpoint,
    safetensors_write_error,
    save_checkpoint,
)
from fair_core.errors import MAX_MESSAGE_CHARS, FairError
from fair_core.hub import MAX_CONFIG_BYTES, from_pretrained
from fair_core.report import comparison_rows
from fair_core.spec import MAX_SPEC_BYTES, parse_spec, read_spec_file
from fair_core.untrusted import quote

ONE_GB_KB = 2**20  # ru_maxrss is in KiB on Linux


def copy_with_config(tiny_run, tmp_path, change):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run, folder)
    config = json.loads((folder / "config.json").read_text())
    config = change(config)
    if isinstance(config, bytes):
        (folder / "config.json").write_bytes(config)
    else:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def one_line(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 2000, message
    for needle in needles:
        assert needle in message, message
    return message


def run_measured(*args, timeout=120):
    """The command in a child of a fresh interpreter: (returncode, stderr, peak RSS of the child in KiB, seconds)."""
    script = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
              "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(json.dumps([r.returncode, r.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
              "time.perf_counter() - t]))")
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    return json.loads(result.stdout)


def assert_exit_2_one_line(code, stderr, *needles):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------- config.json
def set_at(path, value):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return config

    return change


@pytest.mark.parametrize("change,needles", [
    (lambda c: [1, 2], ["config.json", "not a fair model config"]),
    (lambda c: json.dumps("just a string"), ["config.json", "not a fair model config"]),
    (set_at(["preprocessing"], "224"), ["config.json", "preprocessing"]),
    (set_at(["data", "class_names"], ["square"]), ["config.json", "data.class_names: 1 names for num_classes 2"]),
    (set_at(["num_classes"], "2"), ["config.json", "num_classes", "valid integer"]),
    (set_at(["num_classes"], 3e7), ["config.json", "num_classes"]),
    (set_at(["num_classes"], 30_000_000), ["config.json", "num_classes", "less than or equal to 100000"]),
    (set_at(["preprocessing", "image_size"], 0), ["config.json", "preprocessing.image_size", "greater than or equal to 1"]),
    (set_at(["preprocessing", "image_size"], 12000), ["config.json", "preprocessing.image_size", "4096"]),
    (set_at(["preprocessing", "std"], [0.5, 0, 0.5]), ["config.json", "preprocessing.std.1", "greater than 0"]),
    (set_at(["preprocessing", "mean"], [0.5, 0.5]), ["config.json", "preprocessing.mean"]),
    (set_at(["task"], "classification"), ["config.json", "task"]),
    (set_at(["task"], {"name": 3}), ["config.json", "task.name"]),
    (set_at(["model"], {"params": {}}), ["config.json", "model.name", "Field required"]),
    (set_at(["model", "params"], {"width": 10**6}), ["config.json model.params.width"]),
    (set_at(["inference"], {"mode": "slide", "crop_size": 8}), ["config.json", "inference", "crop_size and stride"]),
    (set_at(["data", "sensitive"], "color"), ["config.json", "data.sensitive"]),
    (lambda c: json.dumps(c).replace('"image_size": 16', '"image_size": NaN'), ["config.json", "image_size"]),
    (lambda c: '{"model": ' * 5000, ["config.json", "nested too deeply"]),
    (lambda c: b"\xff not utf8", ["config.json", "not UTF-8"]),
])
def test_malformed_config_json_is_one_line_naming_the_field(tiny_run, tmp_path, change, needles):
    folder = copy_with_config(tiny_run, tmp_path, change)
    with pytest.raises(FairError) as error:
        from_pretrained(folder)
    one_line(error, *needles)


def test_config_bounds_fail_in_milliseconds_and_little_memory_in_fair_predict(tiny_run, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    for name, change in (("size", set_at(["preprocessing", "image_size"], 12000)),
                         ("classes", set_at(["num_classes"], 3e7))):
        folder = copy_with_config(tiny_run, tmp_path / name, change)
        code, stderr, peak_kb, seconds = run_measured(*FAIR, "predict", str(folder), str(image))
        assert_exit_2_one_line(code, stderr, "config.json")
        assert peak_kb < ONE_GB_KB, peak_kb
        assert seconds < 60


def test_a_config_the_weights_cannot_back_is_refused_before_building(tiny_run, tmp_path):
    """num_classes within the bound but not what the weights hold: refused from the weights' header
    (the architecture is built on the meta device first)."""
    def more_classes(config):
        config["num_classes"] = 5000
        config["data"]["class_names"] = [f"c{i}" for i in range(5000)]
        return config

    folder = copy_with_config(tiny_run, tmp_path, more_classes)
    with pytest.raises(FairError) as error:
        from_pretrained(folder)
    one_line(error, "model.safetensors", "shape", "5000")


def test_config_json_that_is_a_fifo_or_too_large_is_refused_before_reading(tiny_run, tmp_path):
    fifo = tmp_path / "fifo"
    shutil.copytree(tiny_run, fifo)
    (fifo / "config.json").unlink()
    os.mkfifo(fifo / "config.json")
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    result = subprocess.run([*FAIR, "predict", str(fifo), str(image)], capture_output=True, text=True, timeout=120)
    assert_exit_2_one_line(result.returncode, result.stderr, "config.json", "not a regular file")

    large = tmp_path / "large"
    shutil.copytree(tiny_run, large)
    with open(large / "config.json", "ab") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(FairError) as error:
        from_pretrained(large)
    one_line(error, "config.json", "8 MiB", "MAX_CONFIG_BYTES")


def test_the_package_field_never_chooses_what_to_pip_install(tiny_run, tmp_path):
    folder = copy_with_config(tiny_run, tmp_path / "a", set_at(["method"], {"name": "evil", "params": {},
                                                                             "package": "evil-pkg; curl x | sh"}))
    with pytest.raises(FairError) as error:
        from_pretrained(folder)
    message = one_line(error, "unknown method 'evil'", "available:")
    assert "evil-pkg" not in message and "pip install" not in message
    folder = copy_with_config(tiny_run, tmp_path / "b", set_at(["method"], {"name": "brand_new", "params": {},
                                                                             "package": "fair_methods"}))
    with pytest.raises(FairError) as error:
        from_pretrained(folder)
    one_line(error, "brand_new", "pip install -U fair-methods")


def test_weights_with_foreign_or_reshaped_tensors_are_refused_by_name(tiny_run, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run, folder)
    save_file({"x" * 5000: torch.zeros(3)}, str(folder / "model.safetensors"))
    with pytest.raises(FairError) as error:
        from_pretrained(folder)
    one_line(error, "model.safetensors", "do not match the architecture", "missing", "unexpected")
    (folder / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(FairError) as error:
        from_pretrained(folder)
    one_line(error, "model.safetensors", "MAX_HEADER_BYTES")


def test_fair_predict_refuses_a_pixel_bomb_and_prints_names_as_text(tiny_run, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (12000, 12000)).save(bomb, optimize=True)  # 17 KB, 144 Mpx
    assert bomb.stat().st_size < 200_000
    code, stderr, peak_kb, _ = run_measured(*FAIR, "predict", str(tiny_run), str(bomb))
    assert_exit_2_one_line(code, stderr, "bomb.png")
    assert peak_kb < ONE_GB_KB, peak_kb
    big = tmp_path / "big.png"
    Image.new("L", (4100, 4100)).save(big)
    with pytest.raises(FairError) as error:
        hub.read_image(big)
    one_line(error, "4100x4100", "MAX_PREDICT_PIXELS")

    folder = copy_with_config(tiny_run, tmp_path, set_at(["data", "class_names"], ["[/x]", "[bold]b"]))
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(image)
    result = subprocess.run([*FAIR, "predict", str(folder), str(image)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "[/x]" in result.stdout or "[bold]b" in result.stdout


# --------------------------------------------------------------------------- specs
ALIAS_BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
) + "train: {milestones: *i}\n"


def test_yaml_alias_bomb_and_cycles_are_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    code, stderr, peak_kb, seconds = run_measured(*FAIR, "run", str(path))
    assert_exit_2_one_line(code, stderr, "bomb.yaml", "aliases", "not supported")
    assert peak_kb < ONE_GB_KB and seconds < 30, (peak_kb, seconds)
    path.write_text("data: &d {params: *d}\n")
    with pytest.raises(FairError) as error:
        read_spec_file(path)
    one_line(error, "aliases")


def test_json_specs_are_reported_by_their_own_parser(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    with pytest.raises(FairError) as error:
        read_spec_file(path)
    assert "YAML" not in one_line(error, "deep.json", "JSON nested too deeply")
    path.write_text('{"train": {"seed": ' + "9" * 5000 + "}}")
    with pytest.raises(FairError) as error:
        read_spec_file(path)
    assert "YAML" not in one_line(error, "invalid JSON")
    path.write_text(json.dumps({"data": {"params": {"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}))
    with pytest.raises(FairError) as error:
        read_spec_file(path)
    one_line(error, "nested more than 32 levels deep", "MAX_SPEC_DEPTH", "data.params")


@pytest.mark.parametrize("change,needles", [
    ({"output_dir": "runs/a\x00b"}, ["output_dir", "NUL"]),
    ({"output_dir": "x" * 4097}, ["output_dir", "at most 4096 characters"]),
    ({"output_dir": "x" * 50_000_000}, ["output_dir", "at most 4096 characters"]),
    ({"train": {"seed": 2**64}}, ["train.seed", "less than or equal to 4294967295"]),
    ({"train": {"seed": -1}}, ["train.seed"]),
    ({"train": {"milestones": [float("nan"), -5, 1e309, 2]}},
     ["train.milestones.0: Input should be a finite number", "train.milestones.1", "train.milestones.2",
      "train.milestones.3"]),
    ({"eval": {"bootstrap": 1e9}}, ["eval.bootstrap", "less than or equal to 10000"]),
    ({"train": {"lr": float("inf")}}, ["train.lr", "finite"]),
    ({"eval": {"metrics": list(range(10_000))}}, ["eval.metrics", "at most 256 items"]),
    ({"data": {"params": {"x": [0] * 200_000}}}, ["more than 100000 list items", "MAX_SPEC_ITEMS"]),
    ({"method": {"name": "m" * 10**6}}, ["method.name", "at most 200 characters"]),
    ({"train": {"y" * 10**6: 1}}, ["train.", "unknown field"]),
    ({"train": {"milestones": ["x"] * 200}}, ["train.milestones.0", "and 195 more errors"]),
])
def test_spec_values_are_bounded_and_echoed_briefly(change, needles):
    with pytest.raises(FairError) as error:
        parse_spec(change)
    message = one_line(error, *needles)
    assert len(message) < 1500


def test_a_50_mb_field_in_a_spec_file_is_one_short_line(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"output_dir": "x" * 50_000_000}))
    code, stderr, peak_kb, _ = run_measured(*FAIR, "run", str(path))
    assert_exit_2_one_line(code, stderr, "huge.json", "MAX_SPEC_BYTES")
    assert len(stderr) < 500 and peak_kb < ONE_GB_KB
    assert MAX_SPEC_BYTES < 50_000_000


def test_cli_errors_for_spec_values_exit_2(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("output_dir: \"a\\0b\"\ntrain: {seed: 18446744073709551616}\neval: {bootstrap: 1.0e+9}\n")
    code, stderr, _, _ = run_measured(*FAIR, "run", str(path))
    assert_exit_2_one_line(code, stderr, "output_dir", "NUL", "train.seed", "eval.bootstrap")


def test_every_fair_error_is_one_bounded_line():
    message = str(FairError("a\nb\r\nc\x1b[31m" + "y" * (3 * MAX_MESSAGE_CHARS)))
    assert "\n" not in message and "\r" not in message and "\x1b" not in message and "\\x1b" in message
    assert len(message) <= MAX_MESSAGE_CHARS
    bomb = [1] * 9
    for _ in range(9):
        bomb = [bomb] * 9  # 9**10 leaves
    started = time.perf_counter()
    assert len(quote(bomb)) <= 60 and len(quote(10**100_000)) <= 60
    assert time.perf_counter() - started < 1


# --------------------------------------------------------------------------- checkpoints
def small_run_state(epoch=0):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    state = {"epoch": epoch, "global_step": 3, "post_trained": False, "spec": {"x": 1},
             "model": model.state_dict(), "optimizers": [optimizer.state_dict()],
             "schedulers": [scheduler.state_dict()], "method": {}}
    return model, [optimizer], [scheduler], state


def test_malformed_checkpoint_files_are_one_line_naming_the_file(tmp_path):
    _, _, _, state = small_run_state()
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, state)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "tiny": data[:5],
        "header": (MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}",
        "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors}",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(FairError) as error:
            load_checkpoint(path)
        one_line(error, f"{name}.safetensors")

    def crafted(name, skeleton, tensors=None):
        path = tmp_path / f"{name}.safetensors"
        metadata = None if skeleton is None else {"fair_state": skeleton if isinstance(skeleton, str) else json.dumps(skeleton)}
        save_file(tensors or {"t0": torch.zeros(2)}, str(path), metadata=metadata)
        with pytest.raises(FairError) as error:
            load_checkpoint(path)
        return one_line(error, f"{name}.safetensors")

    assert "no fair_state" in crafted("foreign", None)
    assert "nest" in crafted("deep", "[" * 100_000 + "]" * 100_000)
    nested = []
    for _ in range(70):
        nested = [nested]
    assert "MAX_STATE_DEPTH" in crafted("deep2", {"__dict__": [["a", nested]]})
    assert "tensor" in crafted("missing", {"__dict__": [["model", {"__tensor__": "t7"}]]})
    assert "not a tensor, tuple or dict record" in crafted("garbage2", {"__dict__": [["model", {"foo": 1}]]})
    assert "not a [key, value] pair" in crafted("pairs", {"__dict__": [["a", 1, 2]]})
    assert "not a [key, value] pair" in crafted("keys", {"__dict__": [[["unhashable"], 1]]})
    assert "not a dict" in crafted("list", [1, 2])


def test_resume_state_is_checked_against_the_model_and_optimisers(tmp_path):
    model, optimizers, schedulers, state = small_run_state(epoch=1)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    check_resume_state(loaded, model, optimizers, 3, path, schedulers)  # the good one passes

    def refused(change, *needles):
        bad = load_checkpoint(path)
        change(bad)
        with pytest.raises(FairError) as error:
            check_resume_state(bad, model, optimizers, 3, path, schedulers)
        one_line(error, "checkpoint.safetensors", *needles)

    refused(lambda s: s.update(epoch=-3), "epoch is -3, outside [0, 3)")
    refused(lambda s: s.update(epoch=10**6), "epoch is 1000000")
    refused(lambda s: s.update(epoch=True), "epoch", "not an integer")
    refused(lambda s: s.update(epoch="1"), "epoch", "not an integer")
    refused(lambda s: s.update(global_step=-1), "global_step")
    refused(lambda s: s.pop("optimizers"), "has no optimizers")
    refused(lambda s: s["model"].pop("0.weight"), "missing", "0.weight")
    refused(lambda s: s["model"].update(extra=torch.zeros(1)), "unexpected", "extra")
    refused(lambda s: s["model"].update({"2.weight": torch.zeros(3, 4)}), "2.weight", "[3, 4]", "[2, 4]")
    refused(lambda s: s["model"].update({"0.bias": "not a tensor"}), "0.bias", "not a tensor")
    refused(lambda s: s["optimizers"].append(s["optimizers"][0]), "2 optimiser states", "1 optimisers")
    refused(lambda s: s["optimizers"][0]["param_groups"][0]["params"].pop(), "parameters")
    refused(lambda s: s["optimizers"][0]["state"][0].update(exp_avg=torch.zeros(9)), "exp_avg", "[9]")
    refused(lambda s: s["optimizers"][0]["state"].update({99: {}}), "99")
    refused(lambda s: s["schedulers"].append({}), "2 scheduler states")
    refused(lambda s: s.update(model=[1]), "model", "not a dict")
    with pytest.raises(FairError, match="does not hold a run's state"):
        check_resume_state([1], model, optimizers, 3, path)


def test_a_full_disk_is_an_oserror_on_every_safetensors_write(tmp_path, monkeypatch):
    import fair_core.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    _, _, _, state = small_run_state()
    target = tmp_path / "c.safetensors"
    save_checkpoint(target, state)
    before = target.read_bytes()
    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError, match="No space left on device") as error:
        save_checkpoint(target, state)
    assert error.value.errno == 28
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
    monkeypatch.setattr(hub, "save_model", full)
    with pytest.raises(OSError, match="No space left on device"):
        hub.write_model_files(tmp_path, torch.nn.Linear(2, 2), {})
    assert safetensors_write_error(SafetensorError("odd"), "p").strerror.startswith("cannot write safetensors")


# --------------------------------------------------------------------------- metrics.json
@pytest.mark.parametrize("content,needles", [
    ("{not json", ["metrics.json", "unreadable metrics.json"]),
    ("[1, 2]", ["metrics.json", "not a run's metrics"]),
    ('{"overall": {}}', ["metrics.json", "spec: Field required", "fairness: Field required"]),
    (None, ["metrics.json", "overall.accuracy", "valid number"]),
    ('{"spec": {"method": {"name": "erm"}, "data": {"name": "d"}}, "overall": [], "fairness": {}, "groups": [{}]}',
     ["metrics.json", "overall", "valid dictionary"]),
    (b"\xff", ["metrics.json", "UTF-8"]),
    ("[" * 100_000, ["metrics.json", "nested too deeply"]),
])
def test_fair_compare_on_malformed_metrics_is_one_line_naming_the_file(tiny_run, tmp_path, content, needles):
    folder = tmp_path / "run"
    folder.mkdir()
    if content is None:
        metrics = json.loads((tiny_run / "metrics.json").read_text())
        metrics["overall"]["accuracy"] = "high"
        content = json.dumps(metrics)
    (folder / "metrics.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(FairError) as error:
        comparison_rows([tiny_run, folder])
    one_line(error, *needles)
    result = subprocess.run([*FAIR, "compare", str(tiny_run), str(folder)], capture_output=True, text=True, timeout=120)
    assert_exit_2_one_line(result.returncode, result.stderr, "metrics.json")


def test_fair_compare_refuses_huge_or_special_metrics_files_and_shows_names_as_text(tiny_run, tmp_path):
    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / "metrics.json", "wb") as handle:
        handle.truncate(report.MAX_METRICS_BYTES + 1)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "metrics.json")
    for folder, needle in ((huge, "MAX_METRICS_BYTES"), (fifo, "not a regular file")):
        result = subprocess.run([*FAIR, "compare", str(folder)], capture_output=True, text=True, timeout=120)
        assert_exit_2_one_line(result.returncode, result.stderr, "metrics.json", needle)
    marked = tmp_path / "[bold]marked"
    marked.mkdir()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    metrics["fairness"]["[/x]"] = 0.5
    (marked / "metrics.json").write_text(json.dumps(metrics))
    result = subprocess.run([*FAIR, "compare", str(tiny_run), str(marked)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    assert "[bold]marked" in result.stdout and "[/x]" in result.stdout


def test_bootstrap_memory_is_checked_before_the_allocation():
    report.check_bootstrap_memory(1000, 10, 2)
    with pytest.raises(FairError, match=r"eval.bootstrap: 10000 replicates .* use at most \d+"):
        report.check_bootstrap_memory(10_000, 1000, 2)
