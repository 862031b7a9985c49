"""The plugin manager: discovers plugins, collects their components, names conflicts.

Discovery follows pytest and conda:
- installed packages advertise plugins in the ``neuroenc`` entry-point group (the
  built-ins under ``plugins/`` do too);
- a registry.yaml may name extra plugins as an importable module (``my_lab.plugin``)
  or a ``.py`` file, relative to the registry's folder;
- plugins can be blocked by name (``--block NAME``, like pytest's ``-p no:NAME``);
- one broken plugin (it fails to import, or a hook raises or returns the wrong thing)
  emits a :class:`PluginWarning` and the others still load; ``strict=True`` turns that
  into a :class:`PluginError`, which plugin authors want.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterable
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import pluggy

from neuroenc import hookspecs
from neuroenc.records import KINDS, Component

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginWarning",
    "UnknownComponentError",
    "PluginManager",
    "suggest",
]

ENTRY_POINT_GROUP = "neuroenc"


class PluginError(RuntimeError):
    """A plugin could not be loaded, or two plugins clash."""


class PluginWarning(UserWarning):
    """A plugin was skipped because it is broken (an error under ``strict=True``)."""


class UnknownComponentError(LookupError):
    """No component of the requested kind has the requested name."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind.replace('_', ' ')} {name!r}; known: "
                         f"{', '.join(self.known) or '(none)'}{suggest(name, self.known)}")


def suggest(name: str, known: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest known name, or ``""``."""
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    if not close:  # an abbreviation: 'frozen' for 'frozen-features'
        close = [k for k in known if str(name) and (k.startswith(str(name)) or str(name) in k)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


class PluginManager:
    """Loads plugins and serves their components by kind and name.

    Parameters
    ----------
    strict : bool
        Raise :class:`PluginError` instead of warning when a plugin is broken.
    blocked : iterable of str
        Plugin names (entry-point names, module names or file stems) not to load.
    load_entrypoints : bool
        Load the ``neuroenc`` entry-point group (installed and built-in plugins).
        Tests switch this off to work with a bare manager.
    """

    def __init__(self, *, strict: bool = False, blocked: Iterable[str] = (),
                 load_entrypoints: bool = True):
        self.strict = strict
        self.blocked = tuple(blocked)  # recorded, so that a run's workers load the same plugins
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._versions: dict[str, str] = {}
        self._cache: dict[str, dict[str, Component]] = {}
        for name in blocked:
            self.pm.set_blocked(name)
        if load_entrypoints:
            self.load_entrypoints()

    # -- discovery ---------------------------------------------------------------------
    def _broken(self, message: str) -> None:
        if self.strict:
            raise PluginError(message)
        warnings.warn(message + " (skipped; pass --strict to make this an error)",
                      PluginWarning, stacklevel=3)

    def _register(self, plugin: object, name: str, version: str = "") -> bool:
        if self.pm.is_blocked(name):
            return False
        if self.pm.has_plugin(name) or self.pm.is_registered(plugin):
            return False  # the same plugin named twice (e.g. entry point and registry)
        try:
            self.pm.register(plugin, name=name)
            # A hookimpl whose name matches no hook is almost always a typo: say so now
            # rather than silently never calling it.
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._broken(f"plugin {name!r}: {exc}")
            return False
        self._versions[name] = version
        self._cache.clear()
        return True

    def load_entrypoints(self) -> None:
        """Register every plugin advertised in the ``neuroenc`` entry-point group."""
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            where = f"{ep.value} from package {dist.name} {dist.version}" if dist else ep.value
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                self._broken(f"plugin {ep.name!r} ({where}) failed to import: "
                             f"{type(exc).__name__}: {exc}")
                continue
            self._register(plugin, ep.name, dist.version if dist else "")

    def load_plugin(self, spec: str, *, base_dir: str | Path | None = None) -> str:
        """Register a plugin named by module path (``pkg.mod``) or ``.py`` file; return its name.

        A relative file path is resolved against ``base_dir`` (the registry's folder).
        Unlike entry points, a plugin the user named explicitly that cannot be loaded is
        always an error: the user asked for it.
        """
        if spec.endswith(".py") or "/" in spec or "\\" in spec:
            path = Path(spec).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise PluginError(f"plugin file {spec!r} not found (looked for {path})")
            name = path.stem
            if self.pm.is_blocked(name):
                return name
            if self.pm.has_plugin(name):
                existing = self.pm.get_plugin(name)
                same = getattr(existing, "__file__", None) and \
                    Path(existing.__file__).resolve() == path.resolve()
                if same:
                    return name  # the same file named twice
                where = getattr(existing, "__file__", None) or repr(existing)
                raise PluginError(
                    f"plugin file {spec!r} ({path}) would be named {name!r}, but plugin {name!r} "
                    f"is already loaded from {where}; the file would be silently ignored. "
                    "Rename the file (plugins are named after the file stem)")
            module = _import_file(path, name)
            version = "file"
        else:
            name = spec
            if self.pm.is_blocked(name) or self.pm.has_plugin(name):
                return name
            try:
                module = importlib.import_module(spec)
            except ImportError as exc:
                raise PluginError(f"plugin module {spec!r} could not be imported: {exc}") from exc
            version = getattr(module, "__version__", "")
        self._register(module, name, version)
        return name

    def register(self, plugin: object, name: str, version: str = "") -> None:
        """Register an already-imported plugin object (used by tests and embedding code)."""
        self._register(plugin, name, version)

    # -- components --------------------------------------------------------------------
    def plugin_names(self) -> list[str]:
        """Return the names of the registered plugins."""
        return sorted(n for n, p in self.pm.list_name_plugin() if p is not None)

    def components(self, kind: str) -> dict[str, Component]:
        """Return ``{name: Component}`` for one kind, collected from every plugin."""
        if kind not in KINDS:
            raise UnknownComponentError("component kind", kind, KINDS)
        if kind in self._cache:
            return self._cache[kind]
        hook = getattr(self.pm.hook, KINDS[kind])
        found: dict[str, Component] = {}
        # Call each implementation on its own so one broken plugin cannot hide the rest.
        for impl in reversed(hook.get_hookimpls()):  # registration order
            provider = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            try:
                records = impl.function()
            except Exception as exc:
                self._broken(f"plugin {provider!r}: hook {KINDS[kind]} raised "
                             f"{type(exc).__name__}: {exc}")
                continue
            if records is None:
                continue
            if isinstance(records, Component) or not isinstance(records, (list, tuple)):
                records = [records]
            for record in records:
                if not isinstance(record, Component):
                    self._broken(f"plugin {provider!r}: hook {KINDS[kind]} returned "
                                 f"{type(record).__name__}, expected neuroenc.records.Component")
                    continue
                record = replace(record, kind=kind, provider=provider,
                                 version=self._versions.get(provider, ""))
                if record.name in found:
                    other = found[record.name].provider
                    raise PluginError(
                        f"two {kind.replace('_', ' ')}s named {record.name!r}: one from plugin "
                        f"{other!r} and one from plugin {provider!r}; rename one or block a "
                        f"plugin with --block NAME")
                found[record.name] = record
        self._cache[kind] = found
        return found

    def get(self, kind: str, name: str) -> Component:
        """Return the component of ``kind`` called ``name``.

        Raises
        ------
        UnknownComponentError
            With the known names and the closest match.
        """
        known = self.components(kind)
        if name not in known:
            raise UnknownComponentError(kind, name, known)
        return known[name]


def _import_file(path: Path, name: str) -> ModuleType:
    module_name = f"neuroenc_user_plugin_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    return module
