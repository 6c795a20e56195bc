"""The documentation keeps up with the code: hooks, profile keys, the two commands."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from medadapt.engine import hookspecs
from medadapt.engine.profile import Profile, _as_model

REPO = Path(__file__).resolve().parent.parent
HOOKS = [
    (name, function)
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("medadapt_")
]


def test_every_hook_is_specified():
    assert len(HOOKS) == 9


@pytest.mark.parametrize(("name", "function"), HOOKS)
def test_hook_has_a_docstring(name, function):
    assert function.__doc__ is not None
    assert len(function.__doc__.strip()) > 40


@pytest.mark.parametrize(("name", "function"), HOOKS)
def test_hook_is_documented_with_its_signature_and_an_example(name, function):
    text = (REPO / "docs" / "hooks.md").read_text()
    arguments = ", ".join(inspect.signature(function).parameters)
    heading = f"### `{name}({arguments})`"
    assert heading in text
    section = text.split(heading, 1)[1].split("\n### ", 1)[0]
    assert "```python" in section
    assert f"def {name}(" in section


def profile_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for field_name, field in model.model_fields.items():
        key = f"{prefix}{field_name}"
        keys.append(key)
        nested = _as_model(field.annotation)
        if nested is not None:
            is_list = "list[" in str(field.annotation)
            keys.extend(profile_keys(nested, f"{key}[]." if is_list else f"{key}."))
    return keys


@pytest.mark.parametrize("key", profile_keys(Profile))
def test_profile_key_is_documented(key):
    assert f"`{key}`" in (REPO / "docs" / "profiles.md").read_text()


def test_readme_gives_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^\s+make demo$", readme, re.MULTILINE)
    assert re.search(r"^\s+make test$", readme, re.MULTILINE)
