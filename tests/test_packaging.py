"""The distribution: a real wheel with everything inside the medadapt namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """medadapt's wheel, built from a copy of the sources so the checkout stays clean."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("engine", "plugins", "hospital_profiles"):
        shutil.copytree(
            REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip(
        "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(work / "dist"), str(source)
    )
    [built] = (work / "dist").glob("medadapt-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_engine_and_plugins_inside_the_medadapt_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    expected = {
        f"medadapt/{path.relative_to(REPO).as_posix()}"
        for folder in ("engine", "plugins")
        for path in (REPO / folder).rglob("*.py")
    }
    assert expected <= set(names)
    assert "medadapt/engine/py.typed" in names
    # The shipped profiles travel with the package: the demo builds its sites from them.
    profiles = {
        f"medadapt/hospital_profiles/{p.name}" for p in REPO.glob("hospital_profiles/*.yaml")
    }
    assert profiles
    assert profiles <= set(names)
    top_levels = {name.split("/")[0] for name in names}
    assert top_levels == {"medadapt", wheel.name.split("-py")[0] + ".dist-info"}


@pytest.mark.slow
def test_wheel_declares_the_command_and_the_builtin_plugins(wheel):
    archive = zipfile.ZipFile(wheel)
    [entry_points] = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "medadapt = medadapt.engine.cli:main" in text
    assert "dicom-ct = medadapt.plugins.dicom_ct" in text
    assert "selection-scores = medadapt.plugins.selection_scores" in text
    assert text.index("[medadapt]") < text.index("dicom-ct =")


@pytest.mark.slow
def test_installed_wheel_runs_and_lists_its_builtin_plugins(wheel, tmp_path):
    target = tmp_path / "target"
    pip("install", "--no-deps", "--target", str(target), str(wheel))
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import medadapt.engine as e; print(e.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)
    assert (target / "bin" / "medadapt").exists()
    result = subprocess.run(
        [sys.executable, "-m", "medadapt.engine", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["selection-scores"]["module"] == "medadapt.plugins.selection_scores"
    assert plugins["selection-scores"]["distribution"] == "medadapt"
    assert plugins["dicom-ct"]["provides"]["data_sources"] == ["dicom-ct"]
