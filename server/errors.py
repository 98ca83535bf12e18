"""APIError and the OpenAI error body `{"error": {"message", "type", "param", "code"}}`."""
from __future__ import annotations

import json
import re

from fastapi.responses import JSONResponse

from server.protocol import ErrorInfo, ErrorResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          429: "rate_limit_error", 500: "internal_server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error answered with `status` and the OpenAI error body; `param` names the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict:
        info = ErrorInfo(message=self.message, type=_TYPES.get(self.status, "error"), param=self.param,
                         code=self.status)
        return ErrorResponse(error=info).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    def sse(self) -> str:
        return f"data: {json.dumps(self.body())}\n\n"


def from_value_error(exc: ValueError, fields: tuple[str, ...] = (), default: str | None = None) -> APIError:
    """A 400 from a ValueError whose message starts with the field name ("<field> <rule>, got X", or
    "<field>.<key> ..."), else names one of `fields` as a word (the first it names, as in vLLM's "token_id(s)
    [..] in logit_bias contain ..."); `default` names the field when the message names none of `fields`."""
    message = str(exc)
    first = message.split(" ", 1)[0].strip("'\":,").split(".")[0]      # "structured_outputs.json ..." too
    if first in fields:
        return APIError(400, message, first)
    named = [(match.start(), field) for field in fields if (match := re.search(rf"\b{field}\b", message))]
    return APIError(400, message, min(named)[1] if named else default)


def from_validation_errors(errors: list[dict]) -> APIError:
    """A 400 from pydantic/FastAPI validation errors, naming the first offending field."""
    parts, param = [], None
    for err in errors:
        if err.get("type") == "json_invalid":
            pos = err.get("loc", ("", "?"))[-1]
            return APIError(400, f"the request body is not valid JSON (error at character {pos}): "
                                 f"{err.get('ctx', {}).get('error', err.get('msg'))}")
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc)
        if param is None and loc:
            param = loc[0]
        parts.append(f"{field}: {err.get('msg')}" if field else str(err.get("msg")))
    return APIError(400, "; ".join(parts) or "invalid request", param)
