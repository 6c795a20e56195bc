"""The command line: help, version, plugins and exit codes."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from medadapt.engine import ComponentKind, ExitCode, SelectionScore, __version__, hookimpl
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host

TEMPLATE = Path(__file__).resolve().parent.parent / "hospital_profiles" / "template.yaml"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_commands_and_documents_every_exit_code():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "plugins" in result.output
    assert "profile" in result.output
    for code in ExitCode:
        assert f"{code.value:>3}  {code.name.lower().replace('_', ' ')}" in result.output


def test_version_is_the_installed_distribution_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"medadapt, version {__version__}"


def test_plugins_json_lists_every_plugin_with_what_it_provides():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    listing = json.loads(result.output)
    [builtin] = [p for p in listing["plugins"] if p["name"] == "selection-scores"]
    assert set(builtin["provides"]) == {
        "data_sources",
        "augmentations",
        "backbones",
        "adaptation_methods",
        "selection_scores",
        "decision_rules",
        "exporters",
    }
    assert builtin["provides"]["selection_scores"] == [
        "dev",
        "entropy",
        "information-maximization",
        "snd",
    ]
    assert listing["failed"] == []
    assert listing["error"] is None


@pytest.mark.usefixtures("toy_plugin")
def test_plugins_table_shows_components_per_kind():
    result = CliRunner().invoke(cli, ["plugins"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "selection scores: dev, entropy, information-maximization, snd" in result.output
    assert "data sources: toy-folder" in result.output
    assert "(registered in code)" in result.output


def test_plugins_components_says_what_each_component_does():
    from medadapt.plugins.selection_scores import Entropy

    result = CliRunner().invoke(cli, ["plugins", "--components"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    first = Entropy.__doc__.strip().splitlines()[0]
    row = next(line for line in result.output.splitlines() if " entropy " in line)
    assert "selection score" in row
    assert first in row
    listing = json.loads(invoke("plugins", "--json").output)
    [scores] = [p for p in listing["plugins"] if p["name"] == "selection-scores"]
    assert scores["descriptions"]["selection_scores"]["entropy"] == first


def test_every_built_in_component_says_in_one_line_what_it_does():
    registry = get_plugin_host().registry()
    silent = [
        f"{kind.value}: {name}"
        for kind in ComponentKind
        for name in registry.names(kind)
        if not (registry.get(kind, name).__dict__.get("__doc__") or "").strip()
    ]
    assert not silent


class Twin(SelectionScore):
    name = "entropy"
    higher_is_better = False

    def score(self, probabilities, features=None):
        return 0.0


class TwinPlugin:
    @hookimpl
    def medadapt_selection_scores(self):
        return [Twin]


def test_conflicting_plugins_are_listed_then_fail_with_the_plugin_exit_code(register):
    register(TwinPlugin(), "twin")
    result = invoke("plugins", "--json")
    assert result.exit_code == ExitCode.PLUGIN_ERROR
    listing = json.loads(result.output)
    assert "two plugins provide the selection score 'entropy'" in listing["error"]
    assert {"selection-scores", "twin"} <= {p["name"] for p in listing["plugins"]}
    checked = invoke("profile", "check", str(TEMPLATE))
    assert checked.exit_code == ExitCode.PLUGIN_ERROR
    assert "error: two plugins provide the selection score 'entropy'" in checked.output


class Greeter:
    @hookimpl
    def medadapt_commands(self, cli):
        @cli.command("greet")
        def greet() -> None:
            """Say hello."""
            click.echo("hello from a plugin")


def test_a_plugin_can_add_a_command(host):
    host.register(Greeter(), "greeter")
    group = click.Group("medadapt")
    host.add_commands(group)
    result = CliRunner().invoke(group, ["greet"])
    assert result.output == "hello from a plugin\n"


def test_the_console_script_adds_plugin_commands(run_medadapt):
    result = run_medadapt("--help")
    assert result.returncode == 0
    assert "profile" in result.stdout


def test_a_bug_gives_the_internal_error_exit_code(register):
    class Crashing:
        @hookimpl
        def medadapt_selection_scores(self):
            raise RuntimeError("boom")

    register(Crashing(), "crashing")
    result = invoke("profile", "check", str(TEMPLATE))
    assert result.exit_code == ExitCode.INTERNAL_ERROR
    assert "RuntimeError: boom" in result.output
    assert "a bug in medadapt or one of its plugins" in result.output


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "the disk is full: free space, or choose an --out on another disk"),
        (errno.EROFS, "the filesystem is read-only: choose another --out"),
        (errno.ENAMETOOLONG, "the path is too long for the filesystem: choose a shorter --out"),
    ],
)
def test_a_full_disk_or_a_forbidden_folder_is_said_plainly_not_called_a_bug(register, code, advice):
    class Writing:
        @hookimpl
        def medadapt_selection_scores(self):
            raise OSError(code, os.strerror(code), "runs/b/report.html")

    register(Writing(), "writing")
    result = invoke("profile", "check", str(TEMPLATE))
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert result.output.startswith(f"error: runs/b/report.html: {os.strerror(code)} ({advice})")
    assert "what was finished before is kept" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)), "Connection reset by peer"),
        (OSError("Timed out trying to connect to tcp://10.0.0.9:8786"), "Timed out trying"),
        (OSError(errno.ELOOP, os.strerror(errno.ELOOP), "m/model.pt"), "m/model.pt: Too many"),
    ],
)
def test_any_os_error_is_the_machines_refusal_said_plainly_not_called_a_bug(register, error, said):
    class Failing:
        @hookimpl
        def medadapt_selection_scores(self):
            raise error

    register(Failing(), "failing")
    result = invoke("profile", "check", str(TEMPLATE))
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert result.output.startswith("error: ")
    assert said in result.output
    assert "Traceback" not in result.output


def test_a_refused_setting_is_said_by_its_key_not_called_a_bug(register):
    from pydantic import BaseModel, Field

    class Settings(BaseModel):
        patients: int = Field(le=100)

    class Refusing:
        @hookimpl
        def medadapt_selection_scores(self):
            Settings(patients=10**9)

    register(Refusing(), "refusing")
    result = invoke("profile", "check", str(TEMPLATE))
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "invalid Settings: patients: Input should be less than or equal to 100" in (
        result.output
    )
    assert "Traceback" not in result.output


def test_a_failed_atomic_write_names_the_file_and_leaves_no_temporary(tmp_path):
    from medadapt.engine.models.model import atomic_file

    target = tmp_path / "report.html"
    with pytest.raises(OSError, match="No space left") as raised, atomic_file(target):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a file object's write does
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_gets_the_permissions_of_any_new_file(tmp_path):
    # mkstemp's temporary is its owner's alone; a model a deployment account reads must not be.
    from medadapt.engine.output.atomic import _UMASK, atomic_file

    with atomic_file(tmp_path / "weights.safetensors") as temporary:
        temporary.write_bytes(b"weights")
    mode = (tmp_path / "weights.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_UMASK
    assert mode & 0o044 == 0o044 or _UMASK & 0o044  # readable by others under umask 022


def test_quiet_prints_only_problems():
    result = invoke("--quiet", "profile", "check", str(TEMPLATE))
    assert result.exit_code == 0
    assert result.output == ""
    assert get_plugin_host().failures == []


def test_a_broken_plugin_is_warned_about_and_listed_while_the_rest_work(
    install_distribution, run_medadapt
):
    site = install_distribution(
        "thirdparty-broken",
        {"broken": "thirdparty_broken"},
        {"thirdparty_broken": "raise RuntimeError('needs a licence server')\n"},
    )
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    listing = run_medadapt("plugins", "--json", env=env)
    assert listing.returncode == 0
    [failure] = json.loads(listing.stdout)["failed"]
    assert failure["name"] == "broken"
    assert failure["distribution"] == "thirdparty-broken"
    assert failure["error"] == "RuntimeError: needs a licence server"
    assert "plugin 'broken' could not be loaded and is skipped" in listing.stderr
    table = run_medadapt("plugins", env=env)
    assert "not loaded: broken (thirdparty_broken): RuntimeError" in table.stderr
    assert "entropy" in table.stdout


def test_load_plugins_variable_applies_to_the_command_line(run_medadapt):
    env = {**os.environ, "MEDADAPT_LOAD_PLUGINS": ""}
    listing = run_medadapt("plugins", "--json", env=env)
    assert json.loads(listing.stdout)["plugins"] == []
    checked = run_medadapt("profile", "check", str(TEMPLATE), env=env)
    assert checked.returncode == ExitCode.INVALID_INPUT
    assert "no installed plugin provides any selection score" in checked.stdout


def test_starting_a_command_imports_neither_scipy_stats_nor_scikit_learn():
    # Together about a second of every command's start-up (``medadapt --help`` too), through
    # the decision-rule plugins' import of the metrics module; the metrics import them when
    # they compute.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medadapt.engine.cli import cli\n"
        "from medadapt.engine.contracts.host import get_plugin_host\n"
        "get_plugin_host().add_commands(cli)\n"
        "print(sorted(m for m in ('scipy.stats', 'sklearn') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
