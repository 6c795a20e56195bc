"""``--device``: every command that computes takes it; it overrides the profile's
``training.device`` and leaves the profile's hash as it is (the device is the machine's)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from medadapt.engine import ExitCode
from medadapt.engine.cli import cli
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.models.card import profile_hash
from medadapt.engine.models.inference import compute_device
from medadapt.engine.profile import load_profile

REGISTRY = get_plugin_host().registry()
COMPUTING = ["train", "adapt", "validate", "shift", "batch", "demo"]


@pytest.fixture
def profile_path(tmp_path, monkeypatch, phantom_site):
    """A small phantom profile that says it computes on a CUDA GPU."""
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path / "cache"))
    document = phantom_site("Device Hospital", seed=3, patients=16, epochs=1)
    document["training"]["device"] = "cuda"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("command", COMPUTING)
def test_every_command_that_computes_takes_device(command):
    group = copy.deepcopy(cli)
    get_plugin_host().add_commands(group)  # the demo is the phantom plugin's command
    done = CliRunner().invoke(group, [command, "--help"])
    assert done.exit_code == 0, done.output
    assert "--device [auto|cpu|cuda|mps]" in done.output


def test_device_overrides_the_profile_and_leaves_its_hash(profile_path):
    profile = load_profile(profile_path, REGISTRY)
    on_cpu = profile.on_device("cpu")
    assert (profile.training.device, on_cpu.training.device) == ("cuda", "cpu")
    assert profile_hash(on_cpu) == profile_hash(profile)
    assert on_cpu.base_dir == profile.base_dir  # relative paths still start at the file
    assert profile.on_device(None) is profile
    # Everything else the profile says is still in the hash.
    other = on_cpu.model_copy(
        update={"training": on_cpu.training.model_copy(update={"batch_size": 4})}
    )
    assert profile_hash(other) != profile_hash(on_cpu)


def test_auto_and_cpu_name_the_devices_there_are():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert compute_device("auto").type == expected
    assert compute_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_that_is_not_here_is_refused_saying_which_to_choose(profile_path, tmp_path):
    done = CliRunner().invoke(
        cli, ["train", "-p", str(profile_path), "--out", str(tmp_path / "run")]
    )
    assert done.exit_code == ExitCode.INVALID_INPUT, done.output
    assert "the device is cuda" in done.output
    assert "--device cpu" in done.output
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without mps")
def test_mps_where_there_is_none_is_refused(profile_path, tmp_path):
    done = CliRunner().invoke(
        cli,
        ["train", "-p", str(profile_path), "--out", str(tmp_path / "run"), "--device", "mps"],
    )
    assert done.exit_code == ExitCode.INVALID_INPUT, done.output
    assert "the device is mps" in done.output


@pytest.mark.slow
def test_a_profile_that_says_cuda_trains_on_the_cpu_with_device_cpu(profile_path, tmp_path):
    out = tmp_path / "run"
    done = CliRunner().invoke(
        cli, ["train", "-p", str(profile_path), "--out", str(out), "--device", "cpu"]
    )
    assert done.exit_code == 0, done.output
    card = json.loads((out / "model" / "card.json").read_text())
    # The card names the profile as it is on disk: the same hash as without the override.
    assert card["profile_sha256"] == profile_hash(load_profile(profile_path, REGISTRY))
    assert card["device"] == "cpu"
