"""`fair augment` and `fair convert-weights` at the command line: bad input is one line, exit 2."""

import json
import subprocess

import pytest

from conftest import FAIR, ROOT

SPEC = json.loads((ROOT / "examples" / "vlbc" / "augment.json").read_text())


def fair(*args, timeout=120):
    return subprocess.run([*FAIR, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("change,message", [
    ({"mode": "x"}, "mode: "),
    ({"batch_size": 0}, "batch_size: "),
    ({"surprise": 1}, "surprise: "),
    ({"generator": {"name": "nope"}}, "generator.name: unknown generator 'nope'; available: diffae, synthetic"),
    ({"editor": {"name": "contraclip", "params": {"paths": "missing.safetensors", "edits": {}}}},
     "editor.params.paths: no file missing.safetensors"),
    ({}, "labeller.params.models.shape: runs/vlbc/shape_labeller: neither a folder nor a Hub repo id"),
])
def test_bad_augment_specs_are_one_line_and_exit_2(tmp_path, change, message):
    path = tmp_path / "augment.json"
    path.write_text(json.dumps({**SPEC, **change, "output_dir": str(tmp_path / "out")}))
    done = fair("augment", str(path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith(f"error: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_convert_weights_of_a_missing_file_is_one_line(tmp_path):
    done = fair("convert-weights", "diffae", str(tmp_path / "last.ckpt"), str(tmp_path / "out"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "last.ckpt" in done.stderr and not (tmp_path / "out").exists()


def test_fair_list_shows_the_augmentation_stages():
    done = fair("list")
    assert done.returncode == 0
    for kind, name in (("generator", "diffae"), ("generator", "synthetic"), ("labeller", "classifiers"),
                       ("editor", "contraclip")):
        assert any(kind in line and name in line for line in done.stdout.splitlines()), (kind, name)


def test_overwrite_never_deletes_a_folder_that_is_not_an_augmentation(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("not an augmentation")
    path = tmp_path / "augment.json"
    spec = {**SPEC, "output_dir": str(out), "generator": {"name": "synthetic"}}
    path.write_text(json.dumps(spec))
    from fair_core.augment import augment, load_augment_spec
    from fair_core.errors import FairError

    with pytest.raises(FairError, match="output_dir: .* holds no manifest.json"):
        augment(load_augment_spec(path), overwrite=True, show_progress=False)
    assert (out / "keep.txt").exists()
