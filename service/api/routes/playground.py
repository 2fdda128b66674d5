"""The web playground: one static page at ``/`` and its script, style sheet and icon.

The page talks to the ``/v1`` API from the browser with the caller's own key (kept in the
browser), so these routes need no key themselves. Every answer carries a Content-Security-Policy
that allows nothing but this origin: scripts and styles only from files served here (no inline
code, no ``eval``), media and images from here or from the ``blob:`` URLs the script makes of
downloaded videos, requests only back to here, and no framing.
"""

from __future__ import annotations

import enum
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (ETag / Last-Modified), so an upgraded service is seen at once.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class Asset(enum.StrEnum):
    """The files under ``static/`` that are served; nothing else in that folder is."""

    SCRIPT = "playground.js"
    STYLE = "playground.css"
    ICON = "favicon.svg"

    @property
    def media_type(self) -> str:
        return {
            Asset.SCRIPT: "text/javascript; charset=utf-8",
            Asset.STYLE: "text/css; charset=utf-8",
            Asset.ICON: "image/svg+xml",
        }[self]


def _static(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
async def playground() -> FileResponse:
    """The playground page."""
    return _static("index.html", "text/html; charset=utf-8")


@router.get("/static/{asset}")
async def asset(asset: Asset) -> FileResponse:
    return _static(asset.value, asset.media_type)
