"""Loading plugins, and the typed calls the rest of the engine makes to them.

Every plugin, built-in or third-party, is a module named under the entry-point group
``medadapt``; medadapt's own are declared in its pyproject.toml like anybody else's. The
rest of the engine never calls ``pm.hook`` directly: it uses :class:`PluginHost`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from medadapt.engine.contracts import hookspecs
from medadapt.engine.contracts.components import ComponentKind
from medadapt.engine.contracts.errors import PluginError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.contracts.wording import did_you_mean

if TYPE_CHECKING:
    import click

    from medadapt.engine.contracts.hookspecs import ReportSection, RunInfo

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
#: Comma-separated plugin names; when set, only those plugins load ("" loads none).
LOAD_PLUGINS_ENV = "MEDADAPT_LOAD_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin, as ``medadapt plugins`` shows it."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str]
    provides: dict[str, list[str]] = field(default_factory=dict)
    #: Per kind and component name, the first line of the component's class docstring.
    descriptions: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    target: str
    distribution: str | None
    version: str | None
    error: str


class PluginHost:
    """The loaded plugins, and the only door through which the engine calls them.

    Example:
        >>> host = PluginHost()
        >>> host.load_entry_points(only={"selection-scores"})
        >>> host.registry().names(ComponentKind.SELECTION_SCORES)
        ['dev', 'entropy', 'information-maximization', 'snd']
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._origin: dict[str, tuple[str | None, str | None]] = {}
        self.failures: list[PluginFailure] = []

    # --- loading --------------------------------------------------------------------------

    def load_entry_points(self, only: Collection[str] | None = None) -> None:
        """Load every plugin declared under the ``medadapt`` entry-point group.

        A plugin that fails to import or breaks the hook contract is skipped, logged as a
        warning and kept in :attr:`failures`; the others load as usual.

        Args:
            only: plugin names to load; ``None`` loads all of them.
        """
        seen: set[str] = set()
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            seen.add(entry_point.name)
            if only is not None and entry_point.name not in only:
                continue
            dist = entry_point.dist
            origin = (dist.name, dist.version) if dist is not None else (None, None)
            try:
                self.register(entry_point.load(), entry_point.name, origin)
            except Exception as exc:  # a broken plugin must not take the others down
                self._record_failure(entry_point.name, entry_point.value, origin, exc)
        for name in sorted(set(only or ()) - seen):
            log.warning(
                "%s names the plugin %r, which is not installed%s",
                LOAD_PLUGINS_ENV,
                name,
                did_you_mean(name, seen),
            )

    def register(
        self,
        plugin: object,
        name: str,
        origin: tuple[str | None, str | None] = (None, None),
    ) -> None:
        """Register a plugin object or module under a name.

        Args:
            plugin: a module or object with :data:`~medadapt.engine.contracts.hookspecs.hookimpl`
                functions.
            name: the plugin's name, unique among loaded plugins.
            origin: the distribution name and version the plugin came from, if any.

        Raises:
            PluginError: the name is taken, a hook function's arguments do not match its
                hook, or it implements a function that matches no hook.
        """
        if self._pm.has_plugin(name):
            taken_by = self._origin.get(name, (None, None))[0] or "a plugin registered in code"
            raise PluginError(f"the plugin name {name!r} is already used by {taken_by}")
        try:
            self._pm.register(plugin, name)
        except (pluggy.PluginValidationError, ValueError) as exc:  # ValueError: same object twice
            raise PluginError(f"plugin {name!r} does not match the medadapt hooks: {exc}") from exc
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            unknown = [
                caller.name
                for caller in self._pm.get_hookcallers(plugin) or []
                if not caller.has_spec()
            ]
            self._pm.unregister(name=name)
            hooks = [h for h in dir(hookspecs) if h.startswith("medadapt_")]
            details = "; ".join(
                f"{h!r} is not a medadapt hook{did_you_mean(h, hooks)}" for h in unknown
            )
            raise PluginError(f"plugin {name!r} was refused: {details or exc}") from exc
        self._origin[name] = origin

    def unregister(self, name: str) -> None:
        """Remove a plugin by name; a name that is not loaded is ignored."""
        if self._pm.has_plugin(name):
            self._pm.unregister(name=name)
        self._origin.pop(name, None)

    def _record_failure(
        self,
        name: str,
        target: str,
        origin: tuple[str | None, str | None],
        exc: Exception,
    ) -> None:
        error = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
        self.failures.append(PluginFailure(name, target, *origin, error))
        log.warning("plugin %r could not be loaded and is skipped: %s", name, error)

    # --- what is loaded -------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every loaded plugin with its origin, its hooks and the components it provides."""
        provided: dict[str, dict[str, list[str]]] = {}
        described: dict[str, dict[str, dict[str, str]]] = {}
        for kind, plugin_name, classes in self._provided():
            names = sorted(getattr(c, "name", repr(c)) for c in classes)
            provided.setdefault(plugin_name, {})[kind.value] = names
            described.setdefault(plugin_name, {})[kind.value] = {
                getattr(c, "name", repr(c)): _first_line(c) for c in classes
            }
        infos = []
        for name, plugin in sorted(self._pm.list_name_plugin(), key=lambda item: item[0]):
            distribution, version = self._origin.get(name, (None, None))
            provides = {
                kind.value: provided.get(name, {}).get(kind.value, []) for kind in ComponentKind
            }
            hooks = sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or [])
            module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
            descriptions = {k: v for k, v in described.get(name, {}).items() if v}
            infos.append(
                PluginInfo(name, module, distribution, version, hooks, provides, descriptions)
            )
        return infos

    def registry(self) -> ComponentRegistry:
        """The components every loaded plugin provides, checked against their contracts.

        Raises:
            PluginError: a component breaks its contract, or two plugins provide one name.
        """
        return ComponentRegistry.from_plugins(
            self._provided(), failed_plugins=[failure.name for failure in self.failures]
        )

    def _provided(self) -> list[tuple[ComponentKind, str, Sequence[object]]]:
        provided = []
        for kind in ComponentKind:
            for impl in getattr(self._pm.hook, kind.hook_name).get_hookimpls():
                returned = impl.function()
                if returned is None:
                    continue
                if isinstance(returned, str | bytes) or not isinstance(returned, Sequence):
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} returned {returned!r} from "
                        f"{kind.hook_name}(); expected a list of classes"
                    )
                provided.append((kind, impl.plugin_name, returned))
        return provided

    # --- lifecycle hooks ------------------------------------------------------------------

    def epoch_end(self, run: RunInfo, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Tell observers an epoch ended; True when any of them asks the loop to stop."""
        answers = self._pm.hook.medadapt_epoch_end(run=run, epoch=epoch, metrics=metrics)
        return any(answer is True for answer in answers)

    def report_sections(self, context: Mapping[str, Any]) -> list[ReportSection]:
        """The extra report sections from every plugin, in their declared order."""
        sections = [
            section
            for returned in self._pm.hook.medadapt_report_sections(context=context)
            for section in returned
        ]
        return sorted(sections, key=lambda section: section.order)

    def add_commands(self, cli: click.Group) -> None:
        """Let every plugin add its commands to the command line."""
        self._pm.hook.medadapt_commands(cli=cli)


def plugins_to_load(environ: Mapping[str, str] = os.environ) -> set[str] | None:
    """The plugin names MEDADAPT_LOAD_PLUGINS allows, or None when it is not set.

    Example:
        >>> sorted(plugins_to_load({"MEDADAPT_LOAD_PLUGINS": "selection-scores, acme"}))
        ['acme', 'selection-scores']
    """
    value = environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


@functools.cache
def get_plugin_host() -> PluginHost:
    """The process-wide plugin host, loaded once from the installed entry points."""
    host = PluginHost()
    host.load_entry_points(only=plugins_to_load())
    return host


def _first_line(component: object) -> str:
    """The first line of a component class's own docstring ('' when it has none)."""
    doc = getattr(component, "__dict__", {}).get("__doc__") or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""
