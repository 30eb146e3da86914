"""Who may reach a flowtel server: the loopback test and the token check, spelled once.

``flowtel serve`` and ``flowtel ingest`` both refuse to listen beyond this machine without a
token (:func:`is_loopback` says which addresses are this machine's), and both check each
request's ``Authorization`` header against it with :func:`token_matches`: ``Bearer <token>``
with the scheme in any case, or HTTP Basic credentials whose password is the token (what a
browser sends after its login prompt), compared in constant time. Part of the bottom layer:
imports nothing of flowtel's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress

__all__ = ["is_loopback", "token_matches"]


def is_loopback(host: str) -> bool:
    """Whether *host* (a name or address, IPv6 with or without brackets) only accepts
    connections from this machine: ``localhost`` in any case, or a loopback address."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries *token*: ``Bearer <token>`` (scheme
    in any case) or HTTP Basic with *token* as the password (the user name is ignored).
    Compared with :func:`hmac.compare_digest`; a missing or malformed header, or an empty
    *token*, never matches."""
    if not token:
        return False
    scheme, _, value = (authorization or "").strip().partition(" ")
    offered = ""
    if scheme.lower() == "bearer":
        offered = value.strip()
    elif scheme.lower() == "basic":
        try:
            offered = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError, ValueError):
            offered = ""
    expected = token.encode("utf-8", "replace")
    return hmac.compare_digest(offered.encode("utf-8", "replace"), expected)
