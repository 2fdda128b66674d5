"""``/v1/admin/webhooks/{owner}``: each API key's webhook secret and allowed hosts, for admin
keys only (403 for any other key).

``owner`` is the key's id as its jobs carry it: the SHA-256 of the key, hex
(``printf %s "$KEY" | sha256sum``), so the route never needs a tenant's key itself. ``POST
.../secret`` creates the key's signing secret or rotates it, and answers it: the only time it
is shown (derived, not stored: ``service.webhooks.tenants``); every event attempted from then
on is signed with it, none with the one before. ``PUT .../allowed_hosts`` sets the hosts the
key's ``webhook_url`` may name. ``GET`` shows both settings but never the secret.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import Caller, require_admin
from service.api.errors import UNAUTHORIZED, APIError, ErrorType, error_responses
from service.api.state import ApiState, api_state, current_caller
from service.webhooks.tenants import (
    MAX_HOSTS,
    KeyWebhooks,
    checked_hosts,
    derive_secret,
    master_key,
)
from service.webhooks.urls import WebhookUrlError

router = APIRouter(prefix="/v1/admin/webhooks", tags=["admin"])

_ERRORS = error_responses(
    UNAUTHORIZED,
    (403, "Not an admin key"),
    (404, "No configured API key has this owner id"),
    (409, "Per-key webhook secrets are off (QVGEN_WEBHOOK_MASTER_SECRET)"),
)
Owner = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="the key's SHA-256, hex")]


class KeyWebhookView(BaseModel):
    object: str = "webhook.key"
    owner: str
    generation: int = Field(description="how many secrets the key has had; 0: none yet")
    allowed_hosts: list[str] = Field(description="empty: QVGEN_WEBHOOK_ALLOWED_HOSTS applies")


class KeyWebhookSecret(KeyWebhookView):
    secret: str = Field(description="whsec_<base64>: shown this once, never again")


class AllowedHosts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_hosts: list[str] = Field(max_length=MAX_HOSTS)


async def _admin_state(request: Request, caller: Caller, owner: str) -> ApiState:
    """The state, once ``caller`` is an admin, per-key secrets are on and ``owner`` is a key."""
    require_admin(caller)
    state = api_state(request)
    if not state.settings.per_key_webhook_secrets:
        raise APIError(
            409,
            "per-key webhook secrets are off: set QVGEN_WEBHOOK_MASTER_SECRET (and API keys)",
            code="per_key_webhooks_off",
        )
    if owner not in state.keys.owners():
        raise APIError(
            404,
            f"no configured API key has owner id {owner!r}",
            type=ErrorType.NOT_FOUND,
            param="owner",
        )
    return state


def _view(owner: str, key: KeyWebhooks) -> KeyWebhookView:
    return KeyWebhookView(
        owner=owner, generation=key.generation, allowed_hosts=list(key.allowed_hosts)
    )


@router.get("/{owner}", response_model=KeyWebhookView, responses=_ERRORS)
async def read_key_webhooks(
    owner: Owner, request: Request, caller: Annotated[Caller, Depends(current_caller)]
) -> KeyWebhookView:
    """The key's secret generation and allowed hosts; never its secret."""
    state = await _admin_state(request, caller, owner)
    return _view(owner, await state.webhook_keys.read(owner))


@router.post("/{owner}/secret", response_model=KeyWebhookSecret, responses=_ERRORS)
async def rotate_key_secret(
    owner: Owner,
    request: Request,
    response: Response,
    caller: Annotated[Caller, Depends(current_caller)],
) -> KeyWebhookSecret:
    """Create the key's webhook secret, or replace it: the answer holds the new secret, shown
    once; the previous one signs no event attempted from now on."""
    state = await _admin_state(request, caller, owner)
    generation = await state.webhook_keys.rotate(owner)
    key = await state.webhook_keys.read(owner)
    master = master_key(state.settings.webhook_master_secret.get_secret_value())
    response.headers["Cache-Control"] = "no-store"
    return KeyWebhookSecret(
        owner=owner,
        generation=generation,
        allowed_hosts=list(key.allowed_hosts),
        secret=derive_secret(master, owner, generation),
    )


@router.put("/{owner}/allowed_hosts", response_model=KeyWebhookView, responses=_ERRORS)
async def set_key_hosts(
    owner: Owner,
    body: AllowedHosts,
    request: Request,
    caller: Annotated[Caller, Depends(current_caller)],
) -> KeyWebhookView:
    """The hosts the key's ``webhook_url`` may name (exact names or addresses, ``*.example.com``
    for subdomains); an empty list: the global ``QVGEN_WEBHOOK_ALLOWED_HOSTS``."""
    state = await _admin_state(request, caller, owner)
    try:
        hosts = checked_hosts(body.allowed_hosts)
    except (WebhookUrlError, ValueError) as error:
        raise APIError(
            400, f"allowed_hosts: {error}", param="allowed_hosts", code="invalid_value"
        ) from error
    await state.webhook_keys.set_hosts(owner, hosts)
    return _view(owner, await state.webhook_keys.read(owner))
