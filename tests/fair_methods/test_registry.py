"""Every method is registered, and every example spec validates against the registered plugins."""

import pytest

from conftest import ROOT
from fair_core.plugins import get_registry
from fair_core.runner import resolve
from fair_core.spec import load_spec

METHODS = {"erm", "us", "os", "uw", "bm", "adv", "di", "bcbb", "flac", "zut"}


def test_all_methods_are_registered_by_fair_methods():
    registry = get_registry(refresh=True)
    assert METHODS <= set(registry.names("methods"))
    for name in METHODS:
        entry = registry.get("methods", name)
        assert entry.package == "fair-methods"
        assert entry.obj.paper and entry.obj.description and entry.obj.__doc__


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.json")), ids=lambda p: p.name)
def test_example_spec_validates(path):
    run = resolve(load_spec(path))
    assert run.spec.method.name in METHODS
