"""Keyed pseudonyms: the only form in which a patient, study or series leaves a data source.

A pseudonym is an HMAC-SHA256 of the identifier under a site secret, so the same patient
gets the same pseudonym on every run at that site (splits stay stable, results can be
traced back by whoever holds the key) while nobody without the key can recover or test an
identity from it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medadapt.engine.contracts.errors import InvalidInputError

log = logging.getLogger(__name__)

#: The environment variable holding the site's pseudonym key.
KEY_ENV = "MEDADAPT_PSEUDONYM_KEY"
_MIN_KEY_LENGTH = 16


class Pseudonymizer:
    """Turns identifiers into stable keyed pseudonyms.

    Args:
        key: the site secret; at least 16 characters.

    Example:
        >>> p = Pseudonymizer("a-site-secret-of-some-length")
        >>> p.pseudonym("patient", "12345")
        'patient-c24f137298adda36'
        >>> p.pseudonym("patient", "12345") == p.pseudonym("patient", "12345")
        True
    """

    def __init__(self, key: str) -> None:
        if len(key) < _MIN_KEY_LENGTH:
            raise InvalidInputError(
                f"the pseudonym key is too short ({len(key)} characters); use at least "
                f"{_MIN_KEY_LENGTH}, e.g. the output of: python -c 'import secrets; "
                "print(secrets.token_hex(32))'"
            )
        self._key = key.encode()
        self.ephemeral = False

    @classmethod
    def from_settings(cls, key: str | None, *, allow_ephemeral: bool = False) -> Pseudonymizer:
        """The pseudonymizer for a job: the given key, else $MEDADAPT_PSEUDONYM_KEY.

        Args:
            key: a key from the profile, or None.
            allow_ephemeral: when no key is set, use a random one for this run only (fine
                for looking at a folder; pseudonyms then differ between runs).

        Raises:
            InvalidInputError: no key is set and an ephemeral one is not allowed.
        """
        key = key or os.environ.get(KEY_ENV)
        if key:
            return cls(key)
        if not allow_ephemeral:
            raise InvalidInputError(
                f"no pseudonym key: set the environment variable {KEY_ENV} (or "
                "data.params.pseudonym_key in the profile) to a site secret, so patients get "
                "the same pseudonym on every run"
            )
        log.info("no %s set: pseudonyms are random for this run only", KEY_ENV)
        pseudonymizer = cls(secrets.token_hex(32))
        pseudonymizer.ephemeral = True
        return pseudonymizer

    def pseudonym(self, kind: str, identifier: str) -> str:
        """The pseudonym of an identifier; ``kind`` keeps patients and series apart."""
        digest = hmac.new(self._key, f"{kind}\0{identifier}".encode(), hashlib.sha256)
        return f"{kind}-{digest.hexdigest()[:16]}"


#: Where a data path stood in persistent text: the data folder, then the pseudonym of the
#: path inside it (its suffix kept, so a reader still sees that it was a .dcm file).
DATA_FOLDER = "<data>"
#: What may follow a path in a message (``PATH: reason``, ``(see PATH)``, quotes, the end).
_PATH_ENDS = frozenset(":;,)]}'\"\n\t ")


class PathScrubber:
    """Replaces, in text written to anything that persists (logs, job files, reports,
    JSON), every path inside a data folder by its pseudonym: folders of an export are
    often named by patient name or ID, and so are its files.

    ``<data folder>/DOE^JANE 0042/CT/IM0001.dcm`` becomes ``<data>/path-<16 hex>.dcm``; the
    data folder alone becomes ``<data>``. The pseudonym is keyed like every other, so the
    same file gets the same name on every run at the site; ``medadapt inspect --json``
    gives each rejected file's pseudonym beside its real path, for the person who runs it.
    The terminal shows real paths: it is the person who may read the data.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()) / "export"
        >>> (root / "DOE^JANE 0042").mkdir(parents=True)
        >>> _ = (root / "DOE^JANE 0042" / "IM1.dcm").write_bytes(b"")
        >>> scrub = PathScrubber(Pseudonymizer("a-site-secret-of-some-length"))
        >>> scrub.add(root)
        >>> scrub(f"{root}/DOE^JANE 0042/IM1.dcm: not DICOM; {root} has 1 file")
        '<data>/path-d31d3f6deb9386a5.dcm: not DICOM; <data> has 1 file'
    """

    def __init__(self, pseudonymizer: Pseudonymizer | None = None) -> None:
        self._pseudonymizer = pseudonymizer
        self._roots: dict[str, Path] = {}
        self._kept: set[Path] = set()

    def add(self, folder: Path, keep: Iterable[Path] = ()) -> None:
        """Treat every path inside ``folder`` (and ``folder`` itself) as data, except the
        files in ``keep`` (a label file: named by the profile, by no patient)."""
        for form in {str(folder), str(folder.absolute()), str(folder.resolve())}:
            if form not in ("", os.sep, "."):
                self._roots[form.rstrip(os.sep)] = folder
        self._kept.update(path.resolve() for path in keep)

    def json(self, data: Any) -> Any:
        """``data`` (a JSON document) with every string in it, keys too, scrubbed."""
        if isinstance(data, str):
            return self(data)
        if isinstance(data, Mapping):
            return {self(k) if isinstance(k, str) else k: self.json(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.json(value) for value in data]
        return data

    def __call__(self, text: str) -> str:
        if not self._roots or not text:
            return text
        for root in sorted(self._roots, key=len, reverse=True):  # the deepest folder first
            start = text.find(root)
            while start != -1:
                end = start + len(root)
                if end < len(text) and text[end] not in _PATH_ENDS and text[end] != os.sep:
                    start = text.find(root, end)  # a longer name that begins alike
                    continue
                folder = self._roots[root]
                inner = self._inner_end(text, end, folder) if text[end : end + 1] == os.sep else end
                if inner > end and (folder / text[end + 1 : inner]).resolve() in self._kept:
                    start = text.find(root, inner)
                    continue
                shown = DATA_FOLDER + self._pseudonymised(text[end:inner])
                text = text[:start] + shown + text[inner:]
                start = text.find(root, start + len(shown))
        return text

    def _inner_end(self, text: str, end: int, root: Path) -> int:
        """Where the path that begins at ``text[end]`` (a separator) ends: the longest
        stretch that names an existing file or folder under ``root``, else the first
        place a message would end a path."""
        line_end = text.find("\n", end)
        limit = len(text) if line_end == -1 else line_end
        ends = [i for i in range(end + 1, limit) if text[i] in _PATH_ENDS] + [limit]
        for candidate in reversed(ends):
            relative = text[end + 1 : candidate]
            if relative and (root / relative).exists():
                return candidate
        # A path that no longer exists: it ends where a message ends one ("PATH: reason",
        # "(see PATH)", quotes); a space alone does not end it, folder names hold spaces.
        stops = [text.find(stop, end, limit) for stop in (": ", '"', "'", ")", ", ")]
        return min([stop for stop in stops if stop != -1] + [limit])

    def _pseudonymised(self, inner: str) -> str:
        """``/<pseudonym><suffix>`` of a path inside a data folder, "" for the folder."""
        relative = inner.strip(os.sep)
        if not relative:
            return ""
        if self._pseudonymizer is None:
            self._pseudonymizer = Pseudonymizer.from_settings(None, allow_ephemeral=True)
        suffix = Path(relative).suffix if len(Path(relative).suffix) <= 6 else ""
        return f"{os.sep}{self._pseudonymizer.pseudonym('path', relative)}{suffix}"


#: The data folders this process has read (added by every job that opens a site's data):
#: persistent writers (JSON, reports, the batch's logs) pass their text through it.
data_paths = PathScrubber()
