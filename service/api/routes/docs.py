"""The OpenAPI schema and its two viewers (``/openapi.json``, ``/docs``, ``/redoc``), served as
``api_docs`` says: to anyone, to holders of an API key, or not at all.

FastAPI serves them itself only without authentication; here they are routes of their own, so
that ``key`` puts them behind the same dependency as every ``/v1`` route.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from service.api.state import current_caller
from service.settings import ApiDocs

OPENAPI_URL = "/openapi.json"


def router_for(app: FastAPI, mode: ApiDocs) -> APIRouter | None:
    """The docs' routes for ``mode`` (None: ``off``), behind a key for ``key``."""
    if mode is ApiDocs.OFF:
        return None
    dependencies = [Depends(current_caller)] if mode is ApiDocs.KEY else []
    router = APIRouter(include_in_schema=False, dependencies=dependencies)

    @router.get(OPENAPI_URL)
    async def openapi() -> JSONResponse:
        schema: dict[str, Any] = app.openapi()
        return JSONResponse(schema)

    @router.get("/docs")
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{app.title} - docs")

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{app.title} - ReDoc")

    return router
