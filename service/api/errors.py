"""Errors in the OpenAI shape: HTTP status plus ``{"error": {message, type, param, code}}``.

Every error the API answers goes through here, including FastAPI's own validation errors and
Starlette's 404/405, so a client sees one shape whatever went wrong.
"""

from __future__ import annotations

import enum
import logging
import reprlib
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

logger = logging.getLogger(__name__)


# A rejected value as the error message quotes it: bounded in length and depth, whatever the
# client sent (a list nested 900 deep would exhaust the stack in a plain repr).
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist = 2, 200, 200, 4


def _quoted(value: object) -> str:
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        return f"a {type(value).__name__} too large to quote"


class ErrorType(enum.StrEnum):
    INVALID_REQUEST = "invalid_request_error"
    AUTHENTICATION = "authentication_error"
    PERMISSION = "permission_error"
    NOT_FOUND = "not_found_error"
    RATE_LIMIT = "rate_limit_error"
    SERVICE_UNAVAILABLE = "service_unavailable_error"
    SERVER = "server_error"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# What every route that reads a job by id can answer besides its own errors (OpenAPI).
UNAUTHORIZED = (401, "Missing or wrong API key")
UNKNOWN_ID = (404, "Unknown id")


def error_responses(*entries: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for (status, description) pairs, each with the error body."""
    return {status: {"model": ErrorBody, "description": text} for status, text in entries}


class APIError(Exception):
    """An error answered to the client as ``status`` with the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: ErrorType = ErrorType.INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type.value, param=param, code=code)
        self.headers = headers or {}


def error_response(error: APIError) -> JSONResponse:
    body = ErrorBody(error=error.detail).model_dump()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def from_validation_error(error: ValidationError | RequestValidationError) -> APIError:
    """400 naming the first bad field, what was wrong and the value given."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(location) or None
    given = first.get("input")
    message = f"{param or 'request'}: {first.get('msg', 'invalid value')}"
    if given is not None and not isinstance(given, dict):
        message += f" (got {_quoted(given)})"
    return APIError(400, message, param=param, code="invalid_value")


# Seconds a client waits before retrying a submission Redis refused for want of memory.
OUT_OF_MEMORY_RETRY_AFTER_S = 30
# At most one log line per this many seconds about a full Redis (a flood would log thousands).
_OUT_OF_MEMORY_LOG_EVERY_S = 10.0


class _Throttled:
    """Counts events and says when to log again: at the first, then once per ``every_s``."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.unlogged = 0
        self._last = -float("inf")

    def due(self) -> bool:
        self.unlogged += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True


def _status_type(status: int) -> ErrorType:
    return {
        401: ErrorType.AUTHENTICATION,
        404: ErrorType.NOT_FOUND,
        429: ErrorType.RATE_LIMIT,
        503: ErrorType.SERVICE_UNAVAILABLE,
    }.get(status, ErrorType.INVALID_REQUEST if status < 500 else ErrorType.SERVER)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    return sorted(_methods_at(request.app.router.routes, request.scope))


def _methods_at(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    """Methods of the routes matching ``scope``'s path, through included routers (FastAPI
    wraps each ``include_router`` in a route of its own, whose ``original_router`` holds them)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        methods |= set(getattr(route, "methods", None) or ())
        included = getattr(route, "original_router", None)
        if included is not None:
            methods |= _methods_at(included.routes, scope)
    return methods


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, APIError)
        return error_response(error)

    async def on_validation(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(from_validation_error(error))

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        status = error.status_code
        headers = dict(error.headers or {})
        if status == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        api_error = APIError(status, str(error.detail), type=_status_type(status), headers=headers)
        return error_response(api_error)

    async def on_redis_down(_: Request, error: Exception) -> JSONResponse:
        logger.warning("redis unreachable: %s", error)
        unavailable = APIError(
            503,
            "the job store is unreachable; retry shortly",
            type=ErrorType.SERVICE_UNAVAILABLE,
            code="store_unavailable",
            headers={"Retry-After": "1"},
        )
        return error_response(unavailable)

    full = _Throttled(_OUT_OF_MEMORY_LOG_EVERY_S)

    async def on_redis_full(request: Request, error: Exception) -> JSONResponse:
        request.app.state.api.metrics.redis_out_of_memory.inc()
        if full.due():
            logger.error(
                "Redis is out of memory (maxmemory reached, policy noeviction): %d submissions "
                "refused with 503 since the last report. Raise Redis's maxmemory, or lower "
                "QVGEN_RETENTION_S or QVGEN_MAX_QUEUE_DEPTH; running jobs still finish, and "
                "memory comes back as finished jobs expire. Redis said: %s",
                full.unlogged,
                error,
            )
            full.unlogged = 0
        unavailable = APIError(
            503,
            "the job store is full and accepts no new jobs now; nothing was created; retry "
            f"after {OUT_OF_MEMORY_RETRY_AFTER_S} s",
            type=ErrorType.SERVICE_UNAVAILABLE,
            code="store_full",
            headers={"Retry-After": str(OUT_OF_MEMORY_RETRY_AFTER_S)},
        )
        return error_response(unavailable)

    async def on_disconnect(_: Request, error: Exception) -> JSONResponse:
        # The client went away mid-body; nobody reads this answer, and it is no server fault.
        logger.debug("client disconnected before sending its whole body")
        return error_response(APIError(400, "client disconnected", code="client_disconnected"))

    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=error)
        return error_response(APIError(500, "internal error", type=ErrorType.SERVER))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)
    app.add_exception_handler(RedisOutOfMemoryError, on_redis_full)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
