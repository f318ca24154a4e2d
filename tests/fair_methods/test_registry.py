"""Every method is registered, and every example spec validates against the registered plugins."""

import pytest

from conftest import ROOT
from fair_core.plugins import get_registry
from fair_core.runner import resolve, resolve_data
from fair_core.spec import load_spec, parse_spec

METHODS = {"erm", "us", "os", "uw", "bm", "adv", "di", "bcbb", "flac", "zut", "mfd", "fdr", "fair_reprogram", "faap", "vlbc"}
FACE_METHODS = {"margin", "mixfairface", "multibranch", "ddl"}  # fair-face's


def test_all_methods_are_registered_by_fair_methods():
    registry = get_registry(refresh=True)
    assert METHODS <= set(registry.names("methods"))
    for name in METHODS:
        entry = registry.get("methods", name)
        assert entry.package == "fair-methods"
        assert entry.obj.paper and entry.obj.description and entry.obj.__doc__


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.json")), ids=lambda p: p.name)
def test_example_spec_validates(path):
    if path.name.endswith("_evaluate.json"):  # a spec for `fair evaluate`: its data has no training split
        assert resolve_data(load_spec(path), training=False).task.name == "verification"
        return
    run = resolve(load_spec(path))
    assert run.spec.method.name in METHODS | FACE_METHODS


def test_face_methods_are_registered_by_fair_face():
    registry = get_registry()
    for name in FACE_METHODS:
        entry = registry.get("methods", name)
        assert entry.package == "fair-face" and entry.obj.tasks == ("verification",)
        assert entry.obj.paper and entry.obj.description and entry.obj.__doc__


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "study").glob("*.yaml")), ids=lambda p: p.name)
def test_study_sweeps_load_and_every_cell_is_a_valid_run(path):
    from fair_core.sweep import load_sweep

    sweep, cells = load_sweep(path)  # each cell checked as a run spec
    methods = {cell.spec["method"]["name"] for cell in cells}
    if path.name.endswith("_fr_patch.yaml"):
        assert methods == {"fair_reprogram"} and {c.spec["method"]["params"]["trigger"] for c in cells} == {"patch"}
    else:  # the study's 13 methods (and zut on the synthetic data), every one of them
        assert methods >= METHODS - {"zut", "vlbc"}  # vlbc needs fair augment first
    for cell in cells:
        resolve(parse_spec(cell.spec))
