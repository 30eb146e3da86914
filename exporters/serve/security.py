"""The server's guard: a bearer token checked on every path, and strict security headers.

:class:`Guard` is plain ASGI middleware. With a token configured, every request (pages, static
files, the API and the live stream) must carry ``Authorization: Bearer <token>``, or HTTP Basic
credentials whose password is the token (what a browser sends after its login prompt; the
user name is ignored); anything else gets 401 with a JSON body. The check is
:func:`exporters.access.token_matches` (constant time), the one ``flowtel ingest`` uses. Every
response carries a Content-Security-Policy without ``'unsafe-inline'`` or wildcards (scripts,
styles, images and connections from this origin only), ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporters.access import token_matches

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "Guard"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_UNAUTHORIZED = json.dumps(
    {
        "error": "unauthorized",
        "message": "this server needs its token: send 'Authorization: Bearer <token>'",
    }
).encode()


class Guard:
    """ASGI middleware: the token check (when *token* is set) and the security headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token is not None:
            header = b""
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    header = value
            if not token_matches(header.decode("latin-1"), self.token):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="flowtel", Basic realm="flowtel"'),
                            (b"cache-control", b"no-store"),
                            *SECURITY_HEADERS,
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _UNAUTHORIZED})
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
