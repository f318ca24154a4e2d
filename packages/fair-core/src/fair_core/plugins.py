"""Plugin discovery: pluggy + the ``fair`` entry-point group.

Built-in plugins of fair-core (tasks, backbones and metrics) are registered explicitly; every other
package registers through its distribution's ``fair`` entry points. A plugin that fails to
import is recorded as a warning and skipped, so one broken package never breaks the command line.
The environment variable ``FAIR_PLUGINS`` (comma-separated distribution names) limits which
installed packages load; ``FAIR_PLUGINS=""`` loads only fair-core's built-ins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import FairError

ENTRY_POINT_GROUP = "fair"
ENV_PLUGINS = "FAIR_PLUGINS"
KINDS = ("tasks", "methods", "datasets", "models", "metrics", "commands", "sources", "generators", "labellers",
         "editors")
SINGULAR = {"tasks": "task", "methods": "method", "datasets": "dataset", "models": "model", "metrics": "metric",
            "commands": "command", "sources": "model source", "generators": "generator", "labellers": "labeller",
            "editors": "editor"}

# Names the project's own packages provide, so a missing one can say what to install.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "methods": {n: "fair-methods" for n in ("erm", "us", "os", "uw", "bm", "adv", "di", "bcbb", "flac", "mfd", "zut", "fdr",
                                             "fair_reprogram", "faap", "vlbc")}
    | {n: "fair-face" for n in ("margin", "mixfairface", "multibranch", "ddl")},
    "datasets": {n: "fair-data" for n in ("synthetic", "celeba", "utkface", "cifar10s", "celebahq", "fairface", "hf",
                                          "synthetic_faces", "synthetic_segmentation", "ade20k", "image_folder", "concat")}
    | {"rfw": "fair-face", "face_zip": "fair-face"},
    "models": {n: "fair-face" for n in ("small_embedding_cnn", "iresnet18", "iresnet34", "iresnet50", "iresnet100")},
    "metrics": {n: "fair-face" for n in ("tpr_at_fpr", "tpr_gap", "worst_group_tpr", "fpr_ratio", "group_tpr", "group_fpr")},
    "tasks": {},
    "commands": {"face": "fair-face"},
    "sources": {},  # fair-core's own (fair, timm, hf, onnx) are always registered; their libraries are extras
    "generators": {"diffae": "fair-methods", "synthetic": "fair-data"},
    "labellers": {"classifiers": "fair-methods"},
    "editors": {"contraclip": "fair-methods"},
}
# The project's own distributions: the only names an error ever tells the user to `pip install`
# (a model's config.json names a package too, but whoever wrote the file chose that name).
KNOWN_PACKAGES = frozenset({"fair-core", "fair-data", "fair-methods", "fair-face"})


@dataclass(frozen=True)
class Entry:
    """One registered thing: its kind, name, the object, and the package that provides it."""

    kind: str
    name: str
    obj: Any
    package: str
    version: str


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    warnings: list[str] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def __iter__(self) -> Iterator[Entry]:
        for kind in KINDS:
            yield from (self.entries[kind][n] for n in self.names(kind))

    def get(self, kind: str, name: str, field_path: str | None = None) -> Entry:
        """The entry, or a :class:`FairError` naming the field, the available names, and the
        package to install when the name is a known one."""
        entry = self.entries[kind].get(name)
        if entry is not None:
            return entry
        where = field_path or f"{SINGULAR[kind]}.name"
        provider = KNOWN_PROVIDERS[kind].get(name)
        if provider is not None:
            raise FairError(
                f"{where}: {SINGULAR[kind]} {name!r} is provided by the package {provider}, which is not "
                f"installed or failed to load (pip install {provider})"
            )
        available = ", ".join(self.names(kind)) or "none installed"
        raise FairError(f"{where}: unknown {SINGULAR[kind]} {name!r}; available: {available}")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def normalise_package(name: str) -> str:
    """A distribution name as pip compares them (``Fair_Methods`` is ``fair-methods``)."""
    return _normalise(name)


def _plugin_manager(warnings: list[str]) -> tuple[pluggy.PluginManager, dict[object, tuple[str, str]]]:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    from . import __version__, builtins

    pm.register(builtins, name="fair-core:builtins")
    provider: dict[object, tuple[str, str]] = {builtins: ("fair-core", __version__)}
    allowed = os.environ.get(ENV_PLUGINS)
    wanted = None if allowed is None else {_normalise(n) for n in allowed.split(",") if n.strip()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else ep.module
        if wanted is not None and _normalise(package) not in wanted:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break the command line
            warnings.append(f"plugin {ep.name!r} of {package} failed to load: {type(exc).__name__}: {exc}")
            continue
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=f"{package}:{ep.name}")
        provider[plugin] = (package, dist.version if dist is not None else "unknown")
    return pm, provider


def _collect(pm: pluggy.PluginManager, provider: dict[object, tuple[str, str]], registry: Registry) -> None:
    hooks: dict[str, pluggy.HookCaller] = {
        "tasks": pm.hook.fair_register_tasks,
        "methods": pm.hook.fair_register_methods,
        "datasets": pm.hook.fair_register_datasets,
        "models": pm.hook.fair_register_models,
        "metrics": pm.hook.fair_register_metrics,
        "commands": pm.hook.fair_register_commands,
        "sources": pm.hook.fair_register_model_sources,
        "generators": pm.hook.fair_register_generators,
        "labellers": pm.hook.fair_register_labellers,
        "editors": pm.hook.fair_register_editors,
    }
    for kind, hook in hooks.items():
        for impl in reversed(hook.get_hookimpls()):  # registration order
            package, version = provider.get(impl.plugin, ("unknown", "unknown"))

            def register(name: str, obj: Any, _kind: str = kind, _pkg: str = package, _ver: str = version) -> None:
                existing = registry.entries[_kind].get(name)
                if existing is not None:
                    registry.warnings.append(
                        f"{SINGULAR[_kind]} {name!r} of {_pkg} ignored: already registered by {existing.package}"
                    )
                    return
                registry.entries[_kind][name] = Entry(_kind, name, obj, _pkg, _ver)

            try:
                impl.function(register=register)
            except Exception as exc:
                registry.warnings.append(f"plugin {impl.plugin_name} failed to register {kind}: {type(exc).__name__}: {exc}")


_cached: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The registry of every installed plugin (cached; ``refresh`` re-discovers)."""
    global _cached
    if _cached is None or refresh:
        registry = Registry()
        pm, provider = _plugin_manager(registry.warnings)
        _collect(pm, provider, registry)
        _cached = registry
    return _cached

