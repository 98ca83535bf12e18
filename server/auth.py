"""API-key check as plain ASGI middleware: `Authorization: Bearer <key>`, compared in constant time."""
from __future__ import annotations

import hmac
import json

OPEN_PATHS = frozenset({"/health", "/metrics"})


class APIKeyMiddleware:
    """Answers 401 with an OpenAI error body unless the request carries the key; OPEN_PATHS stay open."""

    def __init__(self, app, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = "missing API key" if not given else "invalid API key"
        body = json.dumps({"error": {"message": f"{message}: send 'Authorization: Bearer <key>'",
                                     "type": "authentication_error", "param": None, "code": 401}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
