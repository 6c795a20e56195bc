"""How plugins are found, checked and called."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medadapt.engine import ComponentKind, ReportSection, RunInfo, SelectionScore, hookimpl
from medadapt.engine.contracts.errors import PluginError
from medadapt.engine.contracts.host import PluginHost, plugins_to_load
from medadapt.engine.contracts.registry import UnknownComponentError

SCORES = ComponentKind.SELECTION_SCORES


def test_builtin_plugins_load_through_the_entry_point_group(host):
    info = {plugin.name: plugin for plugin in host.describe()}
    builtin = info["selection-scores"]
    assert builtin.module == "medadapt.plugins.selection_scores"
    assert builtin.distribution == "medadapt"
    assert builtin.version
    assert builtin.provides["selection_scores"] == [
        "dev",
        "entropy",
        "information-maximization",
        "snd",
    ]
    assert host.failures == []


def test_a_registered_plugin_provides_components_of_every_kind(host, toy):
    host.register(toy, "toy")
    registry = host.registry()
    assert registry.names(ComponentKind.DATA_SOURCES) == ["dicom-ct", "phantom", "toy-folder"]
    assert {"toy-mirror", "toy-noise"} <= set(registry.names(ComponentKind.AUGMENTATIONS))
    assert "toy-volume-net" in registry.names(ComponentKind.BACKBONES)
    assert "toy-finetune" in registry.names(ComponentKind.ADAPTATION_METHODS)
    assert "toy-confidence" in registry.names(SCORES)
    assert registry.provider(SCORES, "toy-confidence") == "toy"
    host.unregister("toy")
    assert "toy-confidence" not in host.registry().names(SCORES)


def test_registry_builds_a_component_from_validated_params(host):
    score = host.registry().create(SCORES, "entropy", {})
    assert score.score([[0.5, 0.5], [1.0, 0.0]]) == pytest.approx(0.5)


def test_unknown_component_suggests_close_names(host):
    with pytest.raises(
        UnknownComponentError, match=r"unknown selection score 'entropi'.*'entropy'"
    ):
        host.registry().get(SCORES, "entropi")


def test_unknown_component_lists_installed_ones_when_nothing_is_close(host):
    with pytest.raises(UnknownComponentError) as caught:
        host.registry().get(SCORES, "prevalence-match")
    message = str(caught.value)
    assert "'prevalence-match'" in message
    assert "no installed plugin provides it" in message
    assert "'entropy', 'information-maximization'" in message


class _Twin(SelectionScore):
    """Claims the built-in name."""

    name = "entropy"
    higher_is_better = False

    def score(self, probabilities, features=None):
        return 0.0


class TwinPlugin:
    @hookimpl
    def medadapt_selection_scores(self):
        return [_Twin]


def test_two_plugins_providing_one_name_is_an_error_naming_both(host):
    host.register(TwinPlugin(), "twin")
    with pytest.raises(PluginError) as caught:
        host.registry()
    message = str(caught.value)
    assert "selection score 'entropy'" in message
    assert "'selection-scores'" in message
    assert "'twin'" in message


class MisspeltHook:
    @hookimpl
    def medadapt_selection_score(self):
        return []


def test_an_implementation_matching_no_hook_is_refused(host):
    with pytest.raises(
        PluginError,
        match=r"'medadapt_selection_score' is not a medadapt hook.*"
        r"did you mean 'medadapt_selection_scores'",
    ):
        host.register(MisspeltHook(), "misspelt")
    assert "misspelt" not in [plugin.name for plugin in host.describe()]


class WrongArguments:
    @hookimpl
    def medadapt_epoch_end(self, run, epoch, losses):
        return None


def test_an_implementation_with_wrong_arguments_is_refused(host):
    with pytest.raises(PluginError, match="'wrong'"):
        host.register(WrongArguments(), "wrong")


def test_a_plugin_name_cannot_be_taken_twice(host):
    with pytest.raises(PluginError, match="'selection-scores' is already used by medadapt"):
        host.register(TwinPlugin(), "selection-scores")


class NotAComponent:
    @hookimpl
    def medadapt_backbones(self):
        return [dict]


class AbstractScore(SelectionScore):
    name = "half-done"
    higher_is_better = True


class HalfDone:
    @hookimpl
    def medadapt_selection_scores(self):
        return [AbstractScore]


class BadName(SelectionScore):
    name = "Bad Name"
    higher_is_better = True

    def score(self, probabilities, features=None):
        return 0.0


class BadNamePlugin:
    @hookimpl
    def medadapt_selection_scores(self):
        return [BadName]


class Undeclared(SelectionScore):
    name = "undeclared"

    def score(self, probabilities, features=None):
        return 0.0


class UndeclaredPlugin:
    @hookimpl
    def medadapt_selection_scores(self):
        return [Undeclared]


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (NotAComponent(), "not a subclass of medadapt.engine.contracts.components.Backbone"),
        (HalfDone(), "does not implement: score"),
        (BadNamePlugin(), "'Bad Name' is not lower-case words"),
        (UndeclaredPlugin(), "does not declare 'higher_is_better'"),
    ],
)
def test_a_component_breaking_its_contract_is_an_error_naming_the_plugin(host, plugin, expected):
    host.register(plugin, "offender")
    with pytest.raises(PluginError, match="plugin 'offender'") as caught:
        host.registry()
    assert expected in str(caught.value)


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_work(install_distribution, caplog):
    install_distribution(
        "thirdparty-broken",
        {"broken": "thirdparty_broken"},
        {"thirdparty_broken": "import a_module_that_is_not_installed\n"},
    )
    host = PluginHost()
    with caplog.at_level(logging.WARNING, logger="medadapt"):
        host.load_entry_points()
    [failure] = host.failures
    assert failure.name == "broken"
    assert failure.distribution == "thirdparty-broken"
    assert "ModuleNotFoundError" in failure.error
    assert "'broken' could not be loaded" in caplog.text
    assert "entropy" in host.registry().names(SCORES)
    with pytest.raises(UnknownComponentError, match=r"failed to load: 'broken'"):
        host.registry().get(SCORES, "anything")


def test_a_third_party_plugin_with_a_misspelt_hook_is_skipped_not_fatal(install_distribution):
    install_distribution(
        "thirdparty-typo",
        {"typo": "thirdparty_typo"},
        {
            "thirdparty_typo": """
            from medadapt.engine import hookimpl

            @hookimpl
            def medadapt_backbone():
                return []
            """
        },
    )
    host = PluginHost()
    host.load_entry_points()
    [failure] = host.failures
    assert "did you mean 'medadapt_backbones'" in failure.error
    assert "typo" not in [plugin.name for plugin in host.describe()]


def test_load_plugins_variable_limits_which_plugins_load(install_distribution, caplog):
    install_distribution(
        "thirdparty-scores",
        {"extra-scores": "thirdparty_scores"},
        {
            "thirdparty_scores": """
            from medadapt.engine import hookimpl

            @hookimpl
            def medadapt_selection_scores():
                return []
            """
        },
    )
    only = plugins_to_load({"MEDADAPT_LOAD_PLUGINS": "extra-scores, not-installed"})
    host = PluginHost()
    with caplog.at_level(logging.WARNING, logger="medadapt"):
        host.load_entry_points(only=only)
    assert [plugin.name for plugin in host.describe()] == ["extra-scores"]
    assert [plugin.distribution for plugin in host.describe()] == ["thirdparty-scores"]
    assert "'not-installed', which is not installed" in caplog.text


def test_load_plugins_variable_empty_loads_none_and_unset_loads_all():
    assert plugins_to_load({"MEDADAPT_LOAD_PLUGINS": ""}) == set()
    assert plugins_to_load({}) is None


class Observer:
    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.seen: list[tuple[int, dict]] = []

    @hookimpl
    def medadapt_epoch_end(self, run, epoch, metrics):
        self.seen.append((epoch, dict(metrics)))
        return epoch >= self.stop_at


def test_epoch_end_reaches_observers_and_any_can_stop_the_loop(host):
    observer = Observer(stop_at=3)
    host.register(observer, "observer")
    run = RunInfo(job="adapt", site="Hospital B", output_dir=Path("out"), seed=1)
    assert host.epoch_end(run, 1, {"loss": 0.7}) is False
    assert host.epoch_end(run, 3, {"loss": 0.5}) is True
    assert observer.seen == [(1, {"loss": 0.7}), (3, {"loss": 0.5})]


class Sections:
    @hookimpl
    def medadapt_report_sections(self, context):
        return [
            ReportSection("Scanner notes", f"<p>{context['site']}</p>", order=200),
            ReportSection("Dose", "<p>low</p>", order=10),
        ]


def test_report_sections_are_collected_in_order(host):
    host.register(Sections(), "sections")
    sections = host.report_sections({"site": "Hospital B"})
    assert [section.title for section in sections] == ["Dose", "Scanner notes"]


def test_one_plugin_object_cannot_be_registered_under_two_names(host):
    observer = Observer(stop_at=1)
    host.register(observer, "first")
    with pytest.raises(PluginError, match="'second'"):
        host.register(observer, "second")
