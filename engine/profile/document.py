"""A profile file as written: its YAML (a key given twice refused), the line of every key,
and pydantic's errors turned into :class:`ProfileIssue` s that name the file, the line, the
key path and what was expected.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.wording import did_you_mean
from medadapt.engine.profile.schema import Profile

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ProfileIssue:
    """One problem in one profile file."""

    file: Path
    loc: Loc
    message: str
    line: int | None = None

    @property
    def key(self) -> str:
        """The key path as a person writes it: ``augmentations[0].params.prob``."""
        text = ""
        for part in self.loc:
            text += f"[{part}]" if isinstance(part, int) else f".{part}"
        return text.lstrip(".")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.key}: {self.message}" if self.loc else f"{where}: {self.message}"


class ProfileError(InvalidInputError):
    """A profile is invalid; :attr:`issues` lists every problem found."""

    def __init__(self, issues: Sequence[ProfileIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class ProfileDocument:
    """A profile's parsed YAML, with the line of every key for error messages."""

    def __init__(self, path: Path, data: dict[str, Any], root: yaml.Node) -> None:
        self.path = path
        self.data = data
        self._root = root

    @classmethod
    def read(cls, path: Path) -> ProfileDocument:
        def fail(message: str, line: int | None = None) -> ProfileError:
            return ProfileError([ProfileIssue(path, (), message, line)])

        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise fail("no such file") from None
        except IsADirectoryError:
            raise fail("is a folder; give the profile's YAML file") from None
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise fail(
                f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save the profile as "
                "UTF-8",
                line,
            ) from None
        except OSError as exc:
            raise fail(f"cannot read the profile: {exc.strerror or exc}") from None
        try:
            root = yaml.compose(text, Loader=_UniqueKeyLoader)
            data = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "not valid YAML"
            raise fail(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
        except yaml.YAMLError as exc:
            raise fail(f"not valid YAML: {exc}") from None
        expected = f"a mapping with the keys {', '.join(Profile.model_fields)}"
        if data is None:
            raise fail(f"the profile is empty; expected {expected}")
        if not isinstance(data, dict) or root is None:
            raise fail(f"expected {expected}, got {_describe(data)}")
        return cls(path, data, root)

    def line(self, loc: Loc) -> int:
        """The 1-based line of the deepest part of ``loc`` present in the file."""
        node = self._root
        line = node.start_mark.line
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                found = [(k, v) for k, v in node.value if k.value == str(part)]
                if not found:
                    break
                key_node, node = found[0]
                line = key_node.start_mark.line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line
            else:
                break
        return line + 1

    def issue(self, loc: Loc, message: str) -> ProfileIssue:
        return ProfileIssue(self.path, loc, message, self.line(loc))

    def issues_from(
        self, exc: ValidationError, model: type[BaseModel], base: Loc = ()
    ) -> list[ProfileIssue]:
        """Turn pydantic's errors into issues a person can act on."""
        issues = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            issues.append(self.issue(base + loc, _explain(error, model, loc)))
        return issues


def _explain(error: Mapping[str, Any], model: type[BaseModel], loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        return (
            f"unknown key{did_you_mean(str(loc[-1]), allowed)}; "
            f"allowed keys are: {', '.join(allowed)}"
        )
    if kind == "missing":
        field_model = _model_at(model, loc[:-1])
        field = field_model.model_fields.get(str(loc[-1])) if field_model else None
        about = f" ({field.description})" if field and field.description else ""
        return f"required key is missing{about}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        target = _model_at(model, loc)
        keys = f" with the keys {', '.join(target.model_fields)}" if target else ""
        return f"expected a mapping{keys}, got {_describe(error['input'])}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind.startswith("value_error") or kind == "assertion_error":
        return message
    return f"{message}; got {_describe(error['input'])}"


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``loc``, if that value is a model."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        current = _as_model(annotation)
        if current is None or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
    return _as_model(annotation)


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in {list, typing.Union, types.UnionType}:
        for argument in typing.get_args(annotation):
            found = _as_model(argument)
            if found is not None:
                return found
    return None


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
