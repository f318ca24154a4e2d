"""Plugin discovery through the `fair` entry points."""

import os
import subprocess

from conftest import FAIR, small_spec
from fair_core.plugins import get_registry


def fair(*args, **env):
    return subprocess.run([*FAIR, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def test_registry_names_the_package_of_each_plugin():
    registry = get_registry(refresh=True)
    expected = {
        ("methods", "erm"): "fair-methods",
        ("datasets", "synthetic"): "fair-data",
        ("models", "small_cnn"): "fair-core",
        ("models", "resnet18"): "fair-core",
        ("models", "resnet50"): "fair-core",
        ("metrics", "spd"): "fair-core",
        ("metrics", "eod"): "fair-core",
    }
    for (kind, name), package in expected.items():
        assert registry.get(kind, name).package == package


def test_fair_list_shows_plugins_with_packages():
    result = fair("list", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    rows = {tuple(cell.strip() for cell in line.split("│")[1:4]) for line in result.stdout.splitlines() if "│" in line}
    for row in [("method", "erm", "fair-methods"), ("dataset", "synthetic", "fair-data"), ("model", "small_cnn", "fair-core"),
                ("model", "resnet18", "fair-core"), ("metric", "deo", "fair-core"), ("metric", "aaod", "fair-core")]:
        assert row in rows, result.stdout


def test_without_fair_methods_erm_disappears_and_run_names_the_package(tmp_path, write_spec):
    listing = fair("list", COLUMNS="200", FAIR_PLUGINS="fair-data")
    assert listing.returncode == 0
    assert "erm" not in listing.stdout and "synthetic" in listing.stdout
    result = fair("run", str(write_spec(small_spec(tmp_path / "out"))), FAIR_PLUGINS="fair-data")
    assert result.returncode == 2
    assert "method.name: method 'erm' is provided by the package fair-methods" in result.stderr
    assert "pip install fair-methods" in result.stderr


def test_a_broken_plugin_is_a_warning_not_a_crash(tmp_path):
    dist = tmp_path / "broken_fair_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-fair-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fair]\nbroken = broken_fair_plugin_module\n")
    (tmp_path / "broken_fair_plugin_module.py").write_text("raise ImportError('missing dependency xyz')\n")
    result = fair("list", COLUMNS="200", PYTHONPATH=str(tmp_path))
    assert result.returncode == 0
    assert "erm" in result.stdout
    assert "broken-fair-plugin failed to load" in result.stderr and "missing dependency xyz" in result.stderr
