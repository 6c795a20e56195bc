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

from medadapt.engine.errors import InvalidInputError

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
