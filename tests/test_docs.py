"""The documentation keeps up with the code: hooks, profile keys, the two commands."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from medadapt.engine.contracts import hookspecs
from medadapt.engine.profile import Profile
from medadapt.engine.profile.document import _as_model

REPO = Path(__file__).resolve().parent.parent
HOOKS = [
    (name, function)
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("medadapt_")
]


def test_every_hook_is_specified():
    assert len(HOOKS) == 10


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
    commands = readme.split("## Two commands", 1)[1].split("\nEach sets up", 1)[0]
    assert re.findall(r"^ {4}(\S.*)$", commands, re.MULTILINE) == ["make demo", "make test"]


def test_the_fast_tier_is_named_for_contributors_and_leaves_out_only_the_slow_mark():
    readme = (REPO / "README.md").read_text()
    assert "`make test-fast`" in readme
    recipe = (REPO / "Makefile").read_text().split("\ntest-fast:", 1)[1].split("\n\n", 1)[0]
    command = recipe.strip().split("\n")[-1]
    assert '-m pytest -m "not slow"' in command
    assert " -k " not in command  # nothing but the slow mark is left out
    assert command.count(" -m ") == 2  # python -m pytest, -m "not slow"
    assert "test-fast" not in readme.split("## Two commands", 1)[1].split("\nEach sets up", 1)[0]


# --- the component contracts, as the docs write them ----------------------------------------

DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def _contracts() -> dict[str, dict[str, inspect.Signature]]:
    """Each component base class (not the data it passes) and its public methods."""
    import dataclasses

    import medadapt.engine as engine

    contracts = {}
    for name in dir(engine):
        cls = getattr(engine, name)
        if not inspect.isclass(cls) or cls.__module__ != "medadapt.engine.contracts.components":
            continue
        methods = {
            method: inspect.signature(function)
            for method, function in vars(cls).items()
            if inspect.isfunction(function) and not method.startswith("_")
        }
        if methods and not dataclasses.is_dataclass(cls):
            contracts[name] = methods
    return contracts


def _parameters(signature: inspect.Signature) -> list[str]:
    return list(signature.parameters)[1:]  # less self


def _code_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)


def _documented_methods() -> list[tuple[str, str, str, list[str]]]:
    """(doc, base class, method, parameters) for every method a doc's code block defines on a
    subclass of a component."""
    import ast

    contracts = _contracts()
    found = []
    for path in DOCS:
        for block in _code_blocks(path):
            try:
                tree = ast.parse(block)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                for base in (b for b in bases if b in contracts):
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and item.name in contracts[base]:
                            parameters = [a.arg for a in item.args.args[1:]]
                            found.append((path.name, base, item.name, parameters))
    return found


def test_the_docs_define_component_methods():
    # The check below has something to check: the tutorials subclass every kind.
    assert {base for _, base, _, _ in _documented_methods()} >= {
        "Backbone",
        "AdaptationMethod",
        "SelectionScore",
        "DecisionRule",
        "DataSource",
    }


@pytest.mark.parametrize(
    ("doc", "base", "method", "parameters"),
    _documented_methods(),
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_method_in_the_docs_takes_the_contracts_parameters(doc, base, method, parameters):
    signature = _contracts()[base][method]
    expected = _parameters(signature)
    required = [p for p in expected if signature.parameters[p].default is inspect.Parameter.empty]
    # Required parameters in the contract's order; optional ones may be left out.
    written = f"docs/{doc}: {base}.{method}({', '.join(parameters)})"
    contract = f"{method}({', '.join(expected)})"
    assert parameters[: len(required)] == required, f"{written} but the contract is {contract}"
    assert set(parameters) <= set(expected), f"{written} but the contract is {contract}"


def test_a_contract_method_named_in_the_docs_prose_has_its_parameters():
    """`build(in_channels, weights)` in a sentence is checked like a code block."""
    contracts = _contracts()
    methods = {m: _parameters(sig) for c in contracts.values() for m, sig in c.items()}
    wrong = []
    for path in DOCS:
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        for method, arguments in re.findall(r"`(?:\w+\.)?(\w+)\(([\w, =]*)\)`", prose):
            if method not in methods:
                continue
            named = [a.split("=")[0].strip() for a in arguments.split(",") if a.strip()]
            if named and named != methods[method][: len(named)]:
                wrong.append(
                    f"docs/{path.name}: `{method}({arguments})`, contract {methods[method]}"
                )
    assert not wrong, "\n".join(wrong)


# --- the defaults docs/profiles.md names ------------------------------------------------------


def _schema_field(key: str):
    model: type[BaseModel] | None = Profile
    field = None
    for part in key.replace("[]", "").split("."):
        assert model is not None, key
        field = model.model_fields[part]
        model = _as_model(field.annotation)
    return field


def _documented_defaults() -> list[tuple[str, str]]:
    """(key, the default as written) for every row of docs/profiles.md that names one."""
    found = []
    for line in (REPO / "docs" / "profiles.md").read_text().splitlines():
        row = re.match(r"\| `([\w.\[\]]+)` \| ([^|]*) \|", line)
        if not row:
            continue
        key, kind = row.groups()
        written = re.search(r"default (-?[\d.]+|true|false|empty)\b", kind) or re.search(
            r"`([\w-]+)` \(default\)", kind
        )
        if written:
            found.append((key, written.group(1)))
    return found


def test_profiles_md_names_defaults():
    assert len(_documented_defaults()) >= 25


@pytest.mark.parametrize(("key", "written"), _documented_defaults())
def test_a_default_in_profiles_md_is_the_schemas(key, written):
    field = _schema_field(key)
    default = field.get_default(call_default_factory=True)
    default = getattr(default, "value", default)  # an enum's value
    if written == "empty":
        assert not default, f"docs/profiles.md: {key} default empty, schema {default!r}"
    elif written in ("true", "false"):
        assert default is (written == "true"), f"docs/profiles.md: {key} {written}, {default!r}"
    elif re.fullmatch(r"-?[\d.]+", written):
        assert float(default) == pytest.approx(float(written)), (
            f"docs/profiles.md: {key} default {written}, schema {default!r}"
        )
    else:
        assert str(default) == written, f"docs/profiles.md: {key} default {written}, {default!r}"


def test_the_decision_rules_defaults_in_the_docs_are_the_rules():
    from medadapt.plugins.decision_rules import AgreementGuard, ValidationBootstrap

    row = next(
        line
        for line in (REPO / "docs" / "profiles.md").read_text().splitlines()
        if line.startswith("| `adaptation.decision.params`")
    )
    for rule in (ValidationBootstrap, AgreementGuard):
        written = row.split(f"`{rule.name}` takes", 1)[1].split(";", 1)[0]
        for name, field in rule.Params.model_fields.items():
            value = re.search(rf"`{name}` \((?:default )?([\d.]+)", written)
            assert value, f"docs/profiles.md: {rule.name}'s {name} not documented"
            assert float(value.group(1)) == pytest.approx(field.default), (rule.name, name)


def test_the_selection_scores_defaults_in_the_docs_are_adapts():
    from medadapt.engine.profile import DEFAULT_SCORE, DEFAULT_SCORE_WITH_SOURCE

    row = next(
        line
        for line in (REPO / "docs" / "profiles.md").read_text().splitlines()
        if line.startswith("| `selection.score`")
    )
    with_source = re.search(r"`([\w-]+)` \([^)]*default for `adapt` with `--source-profile`", row)
    without = re.search(r"`([\w-]+)` \(the default for `adapt` without the source profile", row)
    assert with_source, row
    assert without, row
    assert (with_source.group(1), without.group(1)) == (DEFAULT_SCORE_WITH_SOURCE, DEFAULT_SCORE)


# --- every command and option the docs name -------------------------------------------------


def _command_lines() -> list[tuple[str, str]]:
    """(doc, command line) for every `medadapt ...` the docs show: in code spans, and as
    lines of indented or fenced blocks, with continuation lines joined."""
    found = []
    for path in DOCS:
        text = path.read_text().replace("\\\n", " ")
        spans = re.findall(r"`(?:\.venv/bin/)?medadapt ([^`]+)`", text)
        lines = re.findall(r"^(?: {4,}|\$ )\s*(?:\.venv/bin/)?medadapt (.+)$", text, re.MULTILINE)
        lines += [
            line
            for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.DOTALL)
            for line in re.findall(
                r"^\s*(?:\$ )?(?:\.venv/bin/)?medadapt (.+)$", block, re.MULTILINE
            )
        ]
        found += [(path.name, command.strip()) for command in spans + lines]
    return found


def _resolve(words: list[str]):
    """The click command the words name, and the words left after it."""
    import click

    from medadapt.engine.cli import cli

    command, rest = cli, list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def test_the_docs_show_commands():
    assert len(_command_lines()) >= 30


def test_every_command_and_option_the_docs_show_exists():
    import click

    from medadapt.engine.cli import cli
    from medadapt.engine.contracts.host import get_plugin_host

    get_plugin_host().add_commands(cli)
    wrong = []
    for doc, line in _command_lines():
        words = line.split()
        command, rest = _resolve(words)
        if command is cli or (isinstance(command, click.Group) and rest and rest[0][0] != "-"):
            if words[0] not in ("--help", "-h", "--version"):
                wrong.append(f"{doc}: `medadapt {line}`: no command {words[0]!r}")
            continue
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        options |= {"--help", "-h"}
        for word in rest:
            option = word.split("=", 1)[0].rstrip(".,;:)")
            known = option in options or not re.fullmatch(r"--?[a-z][\w-]*", option)
            if not known:
                wrong.append(f"{doc}: `medadapt {line}`: {command.name} has no {option}")
    assert not wrong, "\n".join(wrong)


def test_every_command_the_docs_call_a_command_or_job_exists():
    from medadapt.engine.cli import cli

    named = {
        (path.name, word)
        for path in DOCS
        for word in re.findall(
            r"`([a-z][\w-]*)` (?:command|job)|(?:command|job)s? `([a-z][\w-]*)`",
            path.read_text(),
        )
    }
    words = {(doc, a or b) for doc, (a, b) in named}
    assert words
    missing = [f"{doc}: `{w}`" for doc, w in sorted(words) if w not in {*cli.commands, "medadapt"}]
    assert not missing, f"no such command: {missing}"


def test_every_option_of_every_command_says_what_it_does():
    import click

    from medadapt.engine.cli import cli
    from medadapt.engine.contracts.host import get_plugin_host

    get_plugin_host().add_commands(cli)  # the commands plugins add too

    def commands(group: click.Group, prefix: str = ""):
        for name, command in group.commands.items():
            yield f"{prefix}{name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")

    silent = [
        f"medadapt {name} {option.opts[-1]}"
        for name, command in commands(cli)
        for option in command.params
        if isinstance(option, click.Option) and not (option.help or "").strip()
    ]
    assert not silent, f"options without help text: {silent}"
    described = [(name, (command.help or "").splitlines()[0]) for name, command in commands(cli)]
    assert all(first for _, first in described), described
