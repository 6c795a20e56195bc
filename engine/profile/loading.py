"""Reading a profile: its YAML, then its structure, then (given the registry) its components."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    ValidationError,
)

from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.profile.checks import check_components
from medadapt.engine.profile.document import ProfileDocument, ProfileError
from medadapt.engine.profile.schema import Profile


def load_profile(path: Path | str, registry: ComponentRegistry | None = None) -> Profile:
    """Read and validate a hospital profile.

    Args:
        path: the YAML file.
        registry: when given, every component the profile names must exist there and
            accept its parameters, and the components must suit the task.

    Raises:
        ProfileError: every problem found, each with file, line, key path and expectation.

    Example:
        >>> profile = load_profile("hospital_profiles/template.yaml")
        >>> profile.site.name
        'Hospital B'
    """
    path = Path(path)
    document = ProfileDocument.read(path)
    try:
        profile = Profile.model_validate(document.data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ProfileError(document.issues_from(exc, Profile)) from None
    profile._base_dir = path.parent
    if registry is not None:
        issues = check_components(profile, registry, document)
        if issues:
            raise ProfileError(issues)
    return profile
