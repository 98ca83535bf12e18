"""API-key check as plain ASGI middleware: `Authorization: Bearer <key>` (any of the server's keys, as
vLLM's `--api-key K1 K2`), compared in constant time."""
from __future__ import annotations

import hmac
import json
from collections.abc import Sequence

OPEN_PATHS = frozenset({"/health", "/ping", "/version", "/metrics"})


class APIKeyMiddleware:
    """Answers 401 with an OpenAI error body unless the request carries a key (`api_key`: one, or a
    sequence of them); OPEN_PATHS stay open."""

    def __init__(self, app, api_key: str | Sequence[str]) -> None:
        keys = (api_key,) if isinstance(api_key, str) else tuple(api_key)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"api_key must be a non-empty string or a list of them, got {api_key!r}")
        self.app = app
        self._expected = tuple(f"Bearer {k}".encode() for k in keys)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or _route_path(scope) in OPEN_PATHS or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        if _matches(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = "missing API key" if not given else "invalid API key"
        body = json.dumps({"error": {"message": f"{message}: send 'Authorization: Bearer <key>'",
                                     "type": "authentication_error", "param": None, "code": 401}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def _matches(given: bytes, expected: tuple[bytes, ...]) -> bool:
    """Whether `given` is one of `expected`, every key compared (in constant time each)."""
    return sum(hmac.compare_digest(given, key) for key in expected) > 0


def _route_path(scope) -> str:
    """The request's path within the app: uvicorn puts --root-path in front of the path the proxy sent."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path
