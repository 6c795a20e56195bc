"""The registry that finds a component class by kind and name."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medadapt.engine.contracts.components import (
    AdaptationMethod,
    Augmentation,
    Backbone,
    Component,
    ComponentKind,
    DataSource,
    DecisionRule,
    SelectionScore,
)
from medadapt.engine.contracts.errors import InvalidInputError, PluginError
from medadapt.engine.contracts.exporter import Exporter
from medadapt.engine.contracts.wording import close_matches, quoted

#: Component names are lower case words joined by "-" (digits and "." allowed: "resnet18").
NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")


@dataclass(frozen=True)
class RegisteredComponent:
    """A component class and the plugin that provided it."""

    cls: type[Component]
    plugin: str


C = TypeVar("C", bound=Component)


class UnknownComponentError(InvalidInputError, LookupError):
    """No installed plugin provides a component of that kind and name."""

    def __init__(
        self,
        kind: ComponentKind,
        name: str,
        known: Sequence[str],
        failed_plugins: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = close_matches(name, known)
        message = f"unknown {kind.label} {name!r}"
        if self.suggestions:
            message += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        elif known:
            message += f"; no installed plugin provides it. Installed: {quoted(sorted(known))}"
        else:
            message += f"; no installed plugin provides any {kind.label}"
        if failed_plugins:
            message += (
                f" (plugins that failed to load: {quoted(failed_plugins)};"
                " `medadapt plugins` says why)"
            )
        super().__init__(message)


class ComponentRegistry:
    """Every component the loaded plugins provide, by kind and name.

    Build it with :meth:`from_plugins`, which checks each class against its contract and
    refuses two plugins that provide the same name.
    """

    def __init__(
        self,
        components: Mapping[ComponentKind, Mapping[str, RegisteredComponent]],
        failed_plugins: Sequence[str] = (),
    ) -> None:
        self._components = {kind: dict(components.get(kind, {})) for kind in ComponentKind}
        self.failed_plugins = tuple(failed_plugins)

    @classmethod
    def from_plugins(
        cls,
        provided: Iterable[tuple[ComponentKind, str, Sequence[object]]],
        failed_plugins: Sequence[str] = (),
    ) -> ComponentRegistry:
        """Check and index what each plugin's discovery hook returned.

        Args:
            provided: (kind, plugin name, what the plugin's hook returned) triples.
            failed_plugins: names of plugins that could not be loaded, for error messages.

        Raises:
            PluginError: a returned object breaks its kind's contract, or two plugins
                provide the same name for one kind.
        """
        components: dict[ComponentKind, dict[str, RegisteredComponent]] = {
            kind: {} for kind in ComponentKind
        }
        for kind, plugin, classes in provided:
            for component in classes:
                check_contract(kind, plugin, component)
                assert isinstance(component, type)  # for the type checker; checked above
                taken = components[kind].get(component.name)
                if taken is not None and taken.cls is not component:
                    raise PluginError(
                        f"two plugins provide the {kind.label} {component.name!r}: "
                        f"{taken.plugin!r} ({_qualname(taken.cls)}) and {plugin!r} "
                        f"({_qualname(component)}); uninstall one, or limit which plugins "
                        "load with MEDADAPT_LOAD_PLUGINS"
                    )
                components[kind][component.name] = RegisteredComponent(component, plugin)
        return cls(components, failed_plugins)

    def names(self, kind: ComponentKind) -> list[str]:
        """The names of every component of a kind, sorted."""
        return sorted(self._components[kind])

    def get(self, kind: ComponentKind, name: str) -> type[Component]:
        """The component class with that name (``family:variant`` names the family).

        Raises:
            UnknownComponentError: with the closest names, when no plugin provides it, or
                when a ``:variant`` is given to a component that is no family.
        """
        family, _, variant = name.partition(":")
        cls = self._entry(kind, family).cls
        if variant and cls.variant_param is None:
            raise UnknownComponentError(kind, name, self.names(kind), self.failed_plugins)
        return cls

    def parameters(
        self, kind: ComponentKind, name: str, params: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The parameters a profile's ``name`` and ``params`` give the component: a
        family's ``:variant`` becomes its variant parameter.

        Raises:
            UnknownComponentError: as :meth:`get`.
            ValueError: the variant is given twice, differently.
        """
        cls = self.get(kind, name)
        given = dict(params or {})
        _, _, variant = name.partition(":")
        if variant and cls.variant_param is not None:
            if given.get(cls.variant_param, variant) != variant:
                raise ValueError(
                    f"{name!r} names {cls.variant_param} {variant!r}, and params say "
                    f"{given[cls.variant_param]!r}; give it once"
                )
            given[cls.variant_param] = variant
        return given

    def provider(self, kind: ComponentKind, name: str) -> str:
        """The name of the plugin that provides a component."""
        return self._entry(kind, name).plugin

    def create(
        self,
        kind: ComponentKind,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        base_dir: Path | None = None,
    ) -> Component:
        """Validate the parameters and build the named component.

        Args:
            kind: the component's kind.
            name: its name, as a profile gives it.
            params: its parameters, as a profile gives them.
            base_dir: the profile's folder, for relative paths among the parameters.

        Raises:
            UnknownComponentError: no plugin provides it.
            pydantic.ValidationError: the component rejects the parameters.
        """
        given = self.parameters(kind, name, params)
        return self.get(kind, name).from_params(given, base_dir=base_dir)

    def build(
        self,
        contract: type[C],
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        base_dir: Path | None = None,
    ) -> C:
        """:meth:`create` for the kind whose contract is ``contract``, typed as that contract:
        ``registry.build(Backbone, "resnet18")``."""
        component = self.create(contract.kind, name, params, base_dir=base_dir)
        assert isinstance(component, contract)
        return component

    def _entry(self, kind: ComponentKind, name: str) -> RegisteredComponent:
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponentError(kind, name, self.names(kind), self.failed_plugins) from None


#: The abstract class every component of each kind derives from.
CONTRACTS: dict[ComponentKind, type[Component]] = {
    ComponentKind.DATA_SOURCES: DataSource,
    ComponentKind.AUGMENTATIONS: Augmentation,
    ComponentKind.BACKBONES: Backbone,
    ComponentKind.ADAPTATION_METHODS: AdaptationMethod,
    ComponentKind.SELECTION_SCORES: SelectionScore,
    ComponentKind.DECISION_RULES: DecisionRule,
    ComponentKind.EXPORTERS: Exporter,
}


def check_contract(kind: ComponentKind, plugin: str, component: object) -> None:
    """Raise a PluginError naming the plugin when a provided object breaks its contract."""
    where = f"plugin {plugin!r} returned {component!r} from {kind.hook_name}()"
    contract = CONTRACTS[kind]
    if not (isinstance(component, type) and issubclass(component, contract)):
        raise PluginError(f"{where}, which is not a subclass of {_qualname(contract)}")
    if inspect.isabstract(component):
        missing = ", ".join(sorted(getattr(component, "__abstractmethods__", ())))
        raise PluginError(f"{where}, which does not implement: {missing}")
    name = getattr(component, "name", None)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PluginError(
            f"{where}, whose name {name!r} is not lower-case words joined by '-' "
            "(for example 'dicom-ct' or 'resnet18')"
        )
    for attribute in _declared_capabilities(contract):
        if not hasattr(component, attribute):
            raise PluginError(f"{where}, which does not declare {attribute!r}")


def _declared_capabilities(contract: type[Component]) -> list[str]:
    """The class attributes a contract declares without a value: each component must set them."""
    declared = inspect.get_annotations(contract)
    return [
        attribute
        for attribute in declared
        if attribute not in Component.__annotations__ and not hasattr(contract, attribute)
    ]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
