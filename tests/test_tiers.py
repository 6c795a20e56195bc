"""The fast tier's guard: a test outside the slow tier that trains, runs pip or launches
torchrun fails with the reason, even when the code under test catches the failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from medadapt.engine.training.loop import Trainer

HEAVY_TESTS = """
import subprocess
import sys

import pytest

from medadapt.engine.training.loop import Trainer


def test_trains():
    Trainer.fit(None)


def test_swallows_the_failure():
    try:
        Trainer.fit(None)
    except BaseException:
        pass


def test_runs_pip():
    subprocess.run([sys.executable, "-m", "pip", "--version"], check=False)


def test_runs_a_training_job():
    subprocess.run("medadapt --quiet train -p x.yaml --out y", shell=True, check=False)


def test_launches_torchrun():
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], check=False)


@pytest.fixture
def trained():
    Trainer.fit(None)


def test_uses_a_fixture_that_trains(trained):
    pass


def test_runs_a_light_command():
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
"""


def test_a_fast_test_that_trains_or_installs_fails_and_says_to_mark_it_slow(pytester):
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_heavy=HEAVY_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rfE")
    result.assert_outcomes(passed=1, failed=5, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*::test_trains trains a model (Trainer.fit)*mark it @pytest.mark.slow*",
            "*::test_swallows_the_failure trains a model (Trainer.fit): mark it @pytest.mark.slow",
            "*::test_runs_pip runs pip*mark it @pytest.mark.slow*",
            "*::test_runs_a_training_job runs `medadapt train`*mark it @pytest.mark.slow*",
            "*::test_launches_torchrun launches torchrun*mark it @pytest.mark.slow*",
            "*::test_uses_a_fixture_that_trains trains a model*mark it @pytest.mark.slow*",
        ]
    )


@pytest.mark.slow
def test_a_slow_test_is_not_guarded():
    assert Trainer.fit.__qualname__ == "Trainer.fit"


GROUPED_TESTS = """
import os

import pytest


@pytest.fixture(scope="module")
def made_once():
    with open({log!r}, "a") as log:
        log.write(f"{{__name__}} {{os.getpid()}}\\n")


@pytest.mark.parametrize("n", range(4))
def test_uses_the_module_fixture(made_once, n):
    pass


@pytest.mark.xdist_group("shared")
def test_in_a_group_across_files():
    with open({log!r}, "a") as log:
        log.write(f"shared {{os.getpid()}}\\n")
"""


@pytest.mark.slow
def test_make_tests_workers_keep_each_files_tests_and_each_named_group_together(pytester):
    # pytest-xdist's loadgroup once ignored every group without a word (under pytest 9.2):
    # each file's module fixtures (the demo's run, a trained model) were then made on both
    # workers, and make test took minutes longer.
    log = pytester.path / "setups.txt"
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    for name in ("test_first", "test_second", "test_third"):
        pytester.makepyfile(**{name: GROUPED_TESTS.format(log=str(log))})
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup"
    )
    result.assert_outcomes(passed=15)
    lines = [line.split() for line in log.read_text().splitlines()]
    made = [name for name, _ in lines if name != "shared"]
    assert sorted(made) == ["test_first", "test_second", "test_third"]
    assert len({pid for name, pid in lines if name == "shared"}) == 1
