"""How a notice leaves: POSTed to a webhook, or given to a local command on its standard input.

A delivery either returns (taken) or raises :class:`DeliveryError`, whose ``retry_after`` is
the receiver's own hint (an HTTP ``Retry-After``) when it gave one. The webhook counts any 2xx
answer as taken and sends ``Content-Type: application/json`` and ``X-Flowtel-Run-Id`` (the
run id, for receivers to drop a repeat); the command counts exit status 0 as taken. Both are
bounded by a timeout. Error messages never show the webhook URL's query or credentials,
which often hold a token.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from exporters.errors import FlowtelError

__all__ = ["CommandDelivery", "Delivery", "DeliveryError", "WebhookDelivery", "shown_url"]


class DeliveryError(FlowtelError, RuntimeError):
    """A notice was not taken; it is retried after a backoff (or *retry_after* seconds)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Delivery(Protocol):
    """Something that takes one JSON document or raises :class:`DeliveryError`."""

    def send(self, document: bytes, *, run_id: str) -> None:
        """Deliver *document* (the notice of *run_id*)."""


def shown_url(url: str) -> str:
    """*url* without credentials, query or fragment (safe to print)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class WebhookDelivery:
    """POST each notice to *url* (``http`` or ``https``), waiting at most *timeout* seconds."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"the webhook must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.timeout = timeout

    def send(self, document: bytes, *, run_id: str) -> None:
        """POST *document*; any 2xx answer is success."""
        request = urllib.request.Request(
            self.url,
            data=document,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "flowtel-notify",
                "X-Flowtel-Run-Id": run_id,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            retry_after = _seconds(exc.headers.get("Retry-After")) if exc.headers else None
            exc.close()
            raise DeliveryError(
                f"{shown_url(self.url)} answered {exc.code}", retry_after=retry_after
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"{shown_url(self.url)}: {reason}") from None


class CommandDelivery:
    """Run *argv* once per notice with the JSON on its standard input; exit 0 is success."""

    def __init__(self, argv: Sequence[str], *, timeout: float = 30.0) -> None:
        if not argv:
            raise ValueError("--exec needs a command")
        self.argv = list(argv)
        self.timeout = timeout

    def send(self, document: bytes, *, run_id: str) -> None:
        """Run the command; a non-zero exit, a timeout or a missing program is a failure."""
        try:
            done = subprocess.run(
                self.argv,
                input=document,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DeliveryError(f"{self.argv[0]} did not finish in {self.timeout:g}s") from None
        except OSError as exc:
            raise DeliveryError(f"cannot run {self.argv[0]}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            tail = f": {said[-1][:200]}" if said else ""
            raise DeliveryError(f"{self.argv[0]} exited with status {done.returncode}{tail}")


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
