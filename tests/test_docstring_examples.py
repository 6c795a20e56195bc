"""Every example in a docstring of the engine and built-in plugins runs and is right."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
from pathlib import Path

import pytest

import medadapt.engine
import medadapt.plugins

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted(
    info.name
    for package in (medadapt.engine, medadapt.plugins)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MEDADAPT_LOAD_PLUGINS", raising=False)
    module = importlib.import_module(module_name)
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert results.failed == 0


def test_doctests_cover_the_whole_engine():
    assert "medadapt.engine.profile" in MODULES
    assert "medadapt.plugins.selection_scores" in MODULES
    assert os.path.isdir(REPO / "engine")
