"""Redaction of secrets before anything becomes a span attribute, event, log field or row.

Values under keys that look secret (case-insensitive substrings, :data:`DEFAULT_SECRET_KEY_PARTS`)
become ``[REDACTED]`` through nested mappings and sequences; in any text, URL and DSN passwords
(``scheme://user:password@host``), secret-looking assignments (``password=...``, ``"token":
"..."``, ``Authorization: Bearer ...``) and PEM private keys are masked. One immutable
:class:`Redactor` holds the rules; :func:`set_redactor` swaps the process-wide one, built at import
from ``FLOWTEL_REDACT_KEYS`` (comma-separated: ``+part`` adds, ``-part`` removes, bare parts
replace the defaults, e.g. ``+ipmi,-session``) and ``FLOWTEL_REDACT_ALLOW`` (exact keys never
redacted, e.g. ``session_count``). :func:`redaction_processor` applies the rules to structlog
events. Standard library only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_SECRET_KEY_PARTS",
    "MAX_DEPTH",
    "REDACTED",
    "Redactor",
    "get_redactor",
    "mask_url_credentials",
    "redact",
    "redact_event_dict",
    "redact_text",
    "redaction_processor",
    "redactor_from_env",
    "set_redactor",
]

REDACTED = "[REDACTED]"
"""What a secret value is replaced with."""

# fmt: off
DEFAULT_SECRET_KEY_PARTS: tuple[str, ...] = (
    "password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "private_key",
    "credential", "authorization", "cookie", "session",
)
# fmt: on
"""Key substrings (case-insensitive) whose values are redacted by default."""

MAX_DEPTH = 16
"""Nesting depth below which values are replaced by a marker instead of being walked (a run's
metadata wraps the context in two more levels and MariaDB accepts 31 at most)."""

_KNOWN_KEYS_LIMIT = 4096
DEEP_MARKER = f"…[truncated: nested deeper than {MAX_DEPTH} levels]"

# scheme://user:password@host. Bounded quantifiers keep hostile input cheap; the last '@' of a
# token wins, so a password holding '@' or '/' is masked whole (at worst a path is too).
_URL_CREDENTIALS = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s:/@]{0,256})"
    r":[^\s\"'<>]{0,1024}@"
)

# key=value, key: value, "key": "value", Authorization: Bearer xyz: the value runs to its closing
# quote, else to whitespace or punctuation. The key (built per redactor) is a token holding a
# secret substring with no dot after it (``db.password=`` yes, ``app.secrets.Error:`` no).
_ASSIGNED_VALUE = (
    r"(?P<sep>[\"']?[ \t]{0,4}[=:][ \t]{0,4})"
    r"(?P<val>\"[^\"]*\"?|'[^']*'?"
    r"|(?:(?:bearer|basic|token|digest)[ \t]+)?[^\s,;&'\"{}()\[\]<>]+)"
)

# PEM private keys (SSH, TLS, PGP), up to their END line or the end of the text.
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----.*?"
    r"(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----|\Z)",
    re.DOTALL,
)


def _mask_url(match: re.Match[str]) -> str:
    return f"{match.group('head')}:{REDACTED}@"


def mask_url_credentials(text: str) -> str:
    """Return *text* with the password of every ``scheme://user:password@host`` masked."""
    if "://" not in text:
        return text
    return _URL_CREDENTIALS.sub(_mask_url, text)


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Redactor:
    """Replaces secret values; immutable once built, safe to share between threads.

    Args:
        secret_key_parts: substrings that mark a key as secret (default
            :data:`DEFAULT_SECRET_KEY_PARTS`); give a new list to replace the defaults.
        extra_key_parts: substrings added to ``secret_key_parts``.
        remove_key_parts: substrings taken out of ``secret_key_parts``.
        allow_keys: exact keys (case-insensitive) never redacted, e.g. ``"session_count"``.
        mask_assignments: also mask ``key=value`` / ``key: value`` in text when the key looks
            secret (URL credentials are always masked).
    """

    __slots__ = ("_allow", "_assignment", "_key_pattern", "_known", "_mask_assignments", "_parts")

    def __init__(
        self,
        secret_key_parts: Iterable[str] = DEFAULT_SECRET_KEY_PARTS,
        *,
        extra_key_parts: Iterable[str] = (),
        remove_key_parts: Iterable[str] = (),
        allow_keys: Iterable[str] = (),
        mask_assignments: bool = True,
    ) -> None:
        for what, given in (("secret_key_parts", secret_key_parts), ("allow_keys", allow_keys)):
            if isinstance(given, str):
                raise TypeError(f"{what} must be a list of strings, not one string: {given!r}")
        removed = {p.lower() for p in remove_key_parts}
        parts = [p.lower() for p in (*secret_key_parts, *extra_key_parts) if p]
        self._parts = tuple(p for p in dict.fromkeys(parts) if p not in removed)
        self._allow = frozenset(k.lower() for k in allow_keys)
        self._mask_assignments = bool(mask_assignments)
        self._known: dict[str, bool] = {}  # keys are low-cardinality: each is matched once
        alternatives = "|".join(re.escape(p) for p in self._parts) or "(?!)"
        self._key_pattern = re.compile(alternatives, re.IGNORECASE)
        self._assignment = re.compile(
            rf"(?<![\w.\-])(?P<key>[\w.\-]{{0,64}}?(?:{alternatives})[\w\-]{{0,64}})"
            + _ASSIGNED_VALUE,
            re.IGNORECASE,
        )

    @property
    def secret_key_parts(self) -> tuple[str, ...]:
        """The key substrings this redactor treats as secret (lower case)."""
        return self._parts

    @property
    def allow_keys(self) -> frozenset[str]:
        """The exact keys (lower case) this redactor never redacts."""
        return self._allow

    def extended(
        self, *, add: Iterable[str] = (), remove: Iterable[str] = (), allow: Iterable[str] = ()
    ) -> Redactor:
        """Return a copy with key substrings added and removed and exact keys allowed."""
        return Redactor(
            self._parts,
            extra_key_parts=add,
            remove_key_parts=remove,
            allow_keys=(*self._allow, *allow),
            mask_assignments=self._mask_assignments,
        )

    def is_secret_key(self, key: str) -> bool:
        """Whether values stored under *key* are redacted."""
        known = self._known.get(key)
        if known is None:
            known = self._key_pattern.search(key) is not None and key.lower() not in self._allow
            if len(self._known) < _KNOWN_KEYS_LIMIT:
                self._known[key] = known
        return known

    def is_plain(self, text: str) -> bool:
        """Whether *text* cannot hold anything :meth:`redact_text` masks (a cheap check)."""
        return "://" not in text and "=" not in text and ":" not in text and "-----" not in text

    def redact_text(self, text: str) -> str:
        """Return *text* with URL credentials, secret assignments and private keys masked."""
        if "://" in text:
            text = _URL_CREDENTIALS.sub(_mask_url, text)
        if "-----BEGIN " in text:
            text = _PRIVATE_KEY_BLOCK.sub(REDACTED, text)
        if self._mask_assignments and ("=" in text or ":" in text) and self._mentions_a_part(text):
            text = self._assignment.sub(self._mask_assignment, text)
        return text

    def _mentions_a_part(self, text: str) -> bool:
        # Substring tests on the lowered text: ~25x faster than the case-insensitive
        # alternation, which the regex engine cannot anchor on a literal.
        lowered = text.lower()
        return any(part in lowered for part in self._parts)

    def _mask_assignment(self, match: re.Match[str]) -> str:
        if match.group("key").lower() in self._allow:
            return match.group(0)
        value = match.group("val")
        quote = value[0] if value[0] in "\"'" else ""
        return f"{match.group('key')}{match.group('sep')}{quote}{REDACTED}{quote}"

    def redact(self, value: Any, _depth: int = 0) -> Any:
        """Return a redacted copy of *value* (mappings and sequences copied, never mutated).

        Strings pass through :meth:`redact_text`; other scalars and objects are returned as
        they are; structures nested deeper than :data:`MAX_DEPTH` become a marker string.
        """
        if isinstance(value, str):
            return self.redact_text(value)
        if not isinstance(value, (Mapping, list, tuple, set, frozenset)):
            return value
        if _depth >= MAX_DEPTH:
            return DEEP_MARKER
        if isinstance(value, Mapping):
            secret = self.is_secret_key
            return {
                k: REDACTED if isinstance(k, str) and secret(k) else self.redact(v, _depth + 1)
                for k, v in value.items()
            }
        return [self.redact(item, _depth + 1) for item in value]

    def __repr__(self) -> str:
        return f"Redactor(secret_key_parts={self._parts!r}, allow_keys={sorted(self._allow)!r})"


def redactor_from_env(environ: Mapping[str, str] | None = None) -> Redactor:
    """Build a redactor from ``FLOWTEL_REDACT_KEYS`` and ``FLOWTEL_REDACT_ALLOW``.

    Args:
        environ: the variables to read (default: ``os.environ``).

    Returns:
        The default redactor changed as the variables say (see the module docstring).
    """
    env = os.environ if environ is None else environ
    base: list[str] | None = None
    added: list[str] = []
    removed: list[str] = []
    for item in _split(env.get("FLOWTEL_REDACT_KEYS", "")):
        if item[0] == "+":
            added.append(item[1:].strip())
        elif item[0] == "-":
            removed.append(item[1:].strip())
        else:
            base = [*(base or []), item]
    return Redactor(
        DEFAULT_SECRET_KEY_PARTS if base is None else base,
        extra_key_parts=added,
        remove_key_parts=removed,
        allow_keys=_split(env.get("FLOWTEL_REDACT_ALLOW", "")),
    )


_redactor = redactor_from_env()


def get_redactor() -> Redactor:
    """Return the process-wide redactor."""
    return _redactor


def set_redactor(redactor: Redactor) -> None:
    """Install *redactor* as the process-wide one (affects values recorded afterwards).

    Raises:
        TypeError: *redactor* is not a :class:`Redactor`.
    """
    global _redactor
    if not isinstance(redactor, Redactor):
        raise TypeError(f"set_redactor() takes a Redactor, not {type(redactor).__name__}")
    _redactor = redactor


def redact(value: Any) -> Any:
    """Redact *value* with the process-wide redactor."""
    return _redactor.redact(value)


def redact_text(text: str) -> str:
    """Mask URL credentials and secret assignments in *text* with the process-wide redactor."""
    return _redactor.redact_text(text)


def redact_event_dict(event_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Return a redacted copy of a structlog event dict (or any log record's fields).

    Secret keys get ``[REDACTED]``, strings (the ``event`` message, a formatted
    ``exception``) are masked, nested values are walked, and exception objects (except under
    ``exc_info``) become their masked ``TypeName: message`` text.
    """
    redactor = _redactor
    clean: dict[str, Any] = {}
    for key, value in event_dict.items():
        if isinstance(key, str) and redactor.is_secret_key(key):
            clean[key] = REDACTED
        elif key == "exc_info":
            clean[key] = value  # left for format_exc_info, whose text is masked (run it first)
        elif isinstance(value, BaseException):
            try:
                text = f"{type(value).__name__}: {value}"
            except Exception:
                text = type(value).__name__
            clean[key] = redactor.redact_text(text)
        else:
            clean[key] = redactor.redact(value)
    return clean


def redaction_processor(logger: Any, method_name: str, event_dict: Any) -> dict[str, Any]:
    """A structlog processor applying :func:`redact_event_dict`: put it after
    ``format_exc_info`` (so the formatted traceback is masked) and before the renderer."""
    return redact_event_dict(event_dict)
