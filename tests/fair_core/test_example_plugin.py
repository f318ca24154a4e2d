"""The README's example plugin package is discovered through its entry point and runs."""

import json
import os
import subprocess

import tomllib

from conftest import FAIR, ROOT, small_spec


def test_example_plugin_registers_and_runs(tmp_path):
    dist = tmp_path / "fair_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fair-example-plugin\nVersion: 0.1.0\n")
    project = tomllib.loads((ROOT / "examples/fair-example-plugin/pyproject.toml").read_text())["project"]
    entry_points = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["fair"].items())
    (dist / "entry_points.txt").write_text("[fair]\n" + entry_points)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "examples/fair-example-plugin")]),
           "COLUMNS": "200"}
    listing = subprocess.run([*FAIR, "list"], capture_output=True, text=True, env=env, timeout=300)
    assert "smooth_ce" in listing.stdout and "fair-example-plugin" in listing.stdout, listing.stderr

    spec = small_spec(tmp_path / "out", method={"name": "smooth_ce", "params": {"smoothing": 0.2}}, train={"epochs": 1})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run([*FAIR, "run", str(tmp_path / "spec.json")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out/metrics.json").read_text())["spec"]["method"]["params"] == {"smoothing": 0.2}
    bad = subprocess.run([*FAIR, "run", str(tmp_path / "spec.json"), "--set", "method.params.smoothing=2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "method.params.smoothing" in bad.stderr
