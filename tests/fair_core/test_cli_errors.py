"""Bad input: one line naming the problem, exit code 2, no traceback, nothing written."""

import json
import subprocess

import pytest

from conftest import FAIR, small_spec


def fair(*args, env=None, cwd=None):
    return subprocess.run([*FAIR, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "change,needles",
    [
        ({"bogus": 1}, ["bogus", "unknown field", "allowed: data, model, method, train, eval, output_dir, hub"]),
        ({"train": {"epochs": "many"}}, ["train.epochs", "valid integer", '"many"']),
        ({"train": {"optimizer": "rmsprop"}}, ["train.optimizer", "'sgd', 'adam' or 'adamw'"]),
        ({"method": {"name": "nope"}}, ["method.name", "unknown method 'nope'", "available:", "erm"]),
        ({"method": {"name": "erm", "params": {"alpha": 1}}}, ["method.params.alpha", "unknown field"]),
        ({"data": {"name": "synthetic", "params": {"bias_ratio": 2}}}, ["data.params.bias_ratio", "less than or equal to 1"]),
        ({"data": {"name": "synthetic", "target": "hair"}}, ["data.target", "unknown attribute 'hair'", "color, shape"]),
        ({"model": {"name": "small_cnn", "params": {"width": "wide"}}}, ["model.params.width"]),
        ({"eval": {"split": "holdout"}}, ["eval.split", "train, val, test"]),
        ({"eval": {"metrics": ["accuracy", "fame"]}}, ["eval.metrics", "unknown metric 'fame'"]),
    ],
)
def test_malformed_spec_exits_2_with_one_line(tmp_path, write_spec, change, needles):
    out = tmp_path / "out"
    spec = small_spec(out)
    spec.update(change)
    assert_one_line_error(fair("run", str(write_spec(spec))), *needles)
    assert not out.exists(), "nothing may be written for a bad spec"


def test_missing_file_and_invalid_json(tmp_path):
    assert_one_line_error(fair("run", str(tmp_path / "nope.json")), "spec file not found", "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": {"name": ')
    assert_one_line_error(fair("run", str(bad)), "bad.json", "invalid JSON", "line 1")
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    assert_one_line_error(fair("run", str(not_object)), "must be an object")


def test_bad_override_and_bad_yaml(tmp_path, write_spec):
    path = write_spec(small_spec(tmp_path / "out"))
    assert_one_line_error(fair("run", str(path), "--set", "train.epochs=abc"), "train.epochs")
    assert_one_line_error(fair("run", str(path), "--set", "noequals"), "FIELD=VALUE")
    yaml_file = tmp_path / "spec.yaml"
    yaml_file.write_text("data: [unclosed\n")
    assert_one_line_error(fair("run", str(yaml_file)), "invalid YAML")


def test_unwritable_output_dir(tmp_path, write_spec):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_one_line_error(fair("run", str(write_spec(small_spec(blocker / "out")))), "output_dir", "cannot write")


def test_schema_is_valid_json_schema_of_the_spec():
    result = fair("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) == {"data", "model", "method", "train", "eval", "output_dir", "hub", "task"}
    assert schema["additionalProperties"] is False


def test_version():
    result = fair("--version")
    assert result.returncode == 0 and "fair 0.1.0" in result.stdout
