"""The answer of ``GET /v1/videos/{id}/content``: a stored file, streamed from the result store
(whole, or one byte range), or a redirect to a URL of the store itself.

Streaming works for every store and answers the same either way: ``Accept-Ranges: bytes``, an
``ETag`` and ``Last-Modified`` from the store, ``206`` with ``Content-Range`` for one satisfiable
range (a browser seeking in a ``<video>``), ``416`` for a range that starts past the end. A
request for several ranges, or a range this server does not parse, gets the whole file (RFC 9110
§14.2 lets a server ignore ``Range``), as does a range whose ``If-Range`` no longer matches. The
store is read in the thread pool: S3 answers over the network.

A redirect (``QVGEN_CONTENT_DELIVERY=redirect``) answers 307 with a presigned URL, valid for
``QVGEN_CONTENT_URL_TTL_S``: the bytes go from the store to the client, past the API. The
object is not looked up first (that would cost the round trip the redirect saves): the record
said completed, and retention removes the record with its objects.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email.utils import formatdate

from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.errors import APIError, ErrorType
from service.settings import ContentDelivery, ServiceSettings
from service.storage import ResultStore, StoredObject, StoreUnavailable, Variant

logger = logging.getLogger(__name__)
_ONE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``first`` … ``last`` of a file, both included."""

    first: int
    last: int


class RangeNotSatisfiable(Exception):
    pass


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The one range ``header`` asks of a file of ``size`` bytes: ``bytes=a-b``, ``bytes=a-``
    (to the end) or ``bytes=-n`` (the last n); None for the whole file (no header, several
    ranges, a syntax not parsed here, or a range covering all of it). ``RangeNotSatisfiable``
    when it starts at or past the end, or asks for the last 0 bytes."""
    if header is None:
        return None
    match = _ONE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    start, end = match.groups()
    if not start and not end:
        return None
    if not start:
        suffix = int(end)
        if suffix == 0:
            raise RangeNotSatisfiable
        first, last = max(0, size - suffix), size - 1
    else:
        first = int(start)
        last = min(int(end), size - 1) if end else size - 1
        if end and int(end) < first:
            return None  # syntactically invalid: ignored
        if first >= size:
            raise RangeNotSatisfiable
    if first == 0 and last == size - 1:
        return None
    return ByteRange(first, last)


def _http_date(unix_s: float) -> str:
    return formatdate(unix_s, usegmt=True)


async def content_response(
    request: Request,
    store: ResultStore,
    settings: ServiceSettings,
    ref: str | None,
    variant: Variant,
    video_id: str,
) -> Response:
    """The ``variant`` of ``video_id``, stored behind ``ref`` (404 when it is gone, 503 when
    the store cannot say); clients save it as ``<video id><the variant's suffix>``."""
    filename = f"{video_id}{variant.suffix}"
    gone = APIError(404, f"the {variant.value} of {video_id} is gone", type=ErrorType.NOT_FOUND)
    if ref is None:
        raise gone
    try:
        if settings.content_delivery is ContentDelivery.REDIRECT:
            # Signing is local, but finding credentials may ask an instance metadata service.
            url = await run_in_threadpool(
                store.presigned_url, ref, variant, filename, settings.content_url_ttl_s
            )
            if url is not None:
                return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        return await _streamed(request, store, ref, variant, filename, gone)
    except StoreUnavailable as error:
        # The detail names settings and hosts: the operator's log, not the client's answer.
        logger.warning("content of %s not served: %s", ref, error)
        raise APIError(
            503,
            "the result store is unavailable; retry later",
            type=ErrorType.SERVICE_UNAVAILABLE,
            code="result_store_unavailable",
            headers={"Retry-After": "5"},
        ) from error


async def _streamed(
    request: Request, store: ResultStore, ref: str, variant: Variant, filename: str, gone: APIError
) -> Response:
    found = await run_in_threadpool(store.stat, ref)
    if found is None:
        raise gone
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": found.etag,
        "Last-Modified": _http_date(found.modified),
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    wanted = _wanted_range(request, found, variant)
    if found.size == 0:
        return Response(b"", media_type=variant.media_type, headers=headers)
    span = wanted or ByteRange(0, found.size - 1)
    chunks = await run_in_threadpool(store.read, ref, span.first, span.last)
    if chunks is None:
        raise gone
    headers["Content-Length"] = str(span.last - span.first + 1)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {span.first}-{span.last}/{found.size}"
    return StreamingResponse(
        chunks, status_code=status, media_type=variant.media_type, headers=headers
    )


def _wanted_range(request: Request, found: StoredObject, variant: Variant) -> ByteRange | None:
    """The range to send, None for all of it; 416 for one outside the file."""
    header = request.headers.get("range")
    try:
        wanted = requested_range(header, found.size)
    except RangeNotSatisfiable:
        raise APIError(
            416,
            f"Range {header!r:.80} lies outside the {found.size} bytes of the {variant.value}",
            code="range_not_satisfiable",
            headers={"Content-Range": f"bytes */{found.size}"},
        ) from None
    condition = request.headers.get("if-range")
    if wanted is not None and condition not in (None, found.etag, _http_date(found.modified)):
        return None  # If-Range: the file is no longer the one the client has part of
    return wanted
