"""Redaction of secrets before anything becomes a span attribute, event, log field or row.

Values stored under keys that look secret (``password``, ``token``, ``api_key`` ...; matched as
case-insensitive substrings) are replaced by ``[REDACTED]``, through nested mappings and
sequences; credentials inside URLs and DSNs (``scheme://user:password@host``) in any string are
masked. The rules live in one :class:`Redactor`; :func:`set_redactor` swaps the process-wide
one. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_SECRET_KEY_PARTS",
    "REDACTED",
    "Redactor",
    "get_redactor",
    "mask_url_credentials",
    "redact",
    "set_redactor",
]

REDACTED = "[REDACTED]"
"""What a secret value is replaced with."""

DEFAULT_SECRET_KEY_PARTS: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "authorization",
    "cookie",
    "session",
)
"""Key substrings (case-insensitive) whose values are redacted by default."""

# scheme://user:password@host  ->  scheme://user:[REDACTED]@host
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*):(?P<pw>[^\s@/]*)@")


def mask_url_credentials(text: str) -> str:
    """Return *text* with the password of every ``scheme://user:password@host`` masked."""
    if "://" not in text:
        return text
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


class Redactor:
    """Replaces secret values; immutable once built, safe to share between threads.

    Args:
        secret_key_parts: substrings that mark a key as secret (default
            :data:`DEFAULT_SECRET_KEY_PARTS`); give a new list to replace the defaults.
        extra_key_parts: substrings added to ``secret_key_parts``.
        allow_keys: exact keys (case-insensitive) never redacted, e.g. ``"session_count"``.
    """

    __slots__ = ("_allow", "_parts")

    def __init__(
        self,
        secret_key_parts: Iterable[str] = DEFAULT_SECRET_KEY_PARTS,
        *,
        extra_key_parts: Iterable[str] = (),
        allow_keys: Iterable[str] = (),
    ) -> None:
        parts = [p.lower() for p in (*secret_key_parts, *extra_key_parts) if p]
        self._parts = tuple(dict.fromkeys(parts))
        self._allow = frozenset(k.lower() for k in allow_keys)

    @property
    def secret_key_parts(self) -> tuple[str, ...]:
        """The key substrings this redactor treats as secret."""
        return self._parts

    def is_secret_key(self, key: str) -> bool:
        """Whether values stored under *key* are redacted."""
        lowered = key.lower()
        if lowered in self._allow:
            return False
        return any(part in lowered for part in self._parts)

    def redact(self, value: Any) -> Any:
        """Return a redacted copy of *value* (mappings and sequences copied, never mutated)."""
        if isinstance(value, str):
            return mask_url_credentials(value)
        if isinstance(value, Mapping):
            return {
                k: (REDACTED if isinstance(k, str) and self.is_secret_key(k) else self.redact(v))
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.redact(item) for item in value]
        return value


_redactor = Redactor()


def get_redactor() -> Redactor:
    """Return the process-wide redactor."""
    return _redactor


def set_redactor(redactor: Redactor) -> None:
    """Install *redactor* as the process-wide one (affects runs started afterwards)."""
    global _redactor
    if not isinstance(redactor, Redactor):
        raise TypeError(f"set_redactor() takes a Redactor, not {type(redactor).__name__}")
    _redactor = redactor


def redact(value: Any) -> Any:
    """Redact *value* with the process-wide redactor."""
    return _redactor.redact(value)
