"""Who may read the worker's API: holders of the bearer token, or, without one, this machine.

The API serves customers' orders (by phone too). With `CONCORD_API_TOKEN` set, every path
but OPEN_PATHS answers 401 without `Authorization: Bearer <token>`; Faust's own pages
(/router, the index) included, since the guard is an aiohttp middleware in front of every
route. Without a token the worker may only listen on loopback (`check_exposure`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from schemas.settings import Settings, SettingsError

# Open without the token: probes and Prometheus carry none, and the desk page holds no data
# (it asks for the token, then sends it on every request of its own).
OPEN_PATHS = frozenset({"/health", "/metrics", "/desk"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header value is `Bearer <token>` (compared in constant time)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    # compare_digest takes as long wherever the first difference is: the answer's timing
    # does not tell a guesser how much of the token it has right.
    matches = hmac.compare_digest(given.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and matches


def is_loopback(host: str) -> bool:
    """Whether `host` (CONCORD_WEB_HOST) is an address only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve the API beyond this machine without a token (a SettingsError)."""
    if settings.api_token is None and not is_loopback(settings.web_host):
        raise SettingsError(
            f"CONCORD_WEB_HOST={settings.web_host} would serve customers' orders to other "
            "hosts without a token: set CONCORD_API_TOKEN (the same on every worker), "
            "or leave CONCORD_WEB_HOST on loopback (127.0.0.1)"
        )


def access_note(settings: Settings) -> str:
    """One line for the start-up log: who can read this worker's API."""
    where = f"{settings.web_host}:{settings.web_port}"
    if settings.api_token is None:
        return (
            f"read API on {where}, loopback only: no CONCORD_API_TOKEN is set, so the "
            "worker serves this machine alone (set one to serve other hosts)"
        )
    return (
        f"read API on {where}: every path but {', '.join(sorted(OPEN_PATHS))} requires "
        "the CONCORD_API_TOKEN bearer token"
    )


def token_guard(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware answering 401 to a request without the token (OPEN_PATHS pass)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or bearer_matches(
            request.headers.get("Authorization"), token
        ):
            return await handler(request)
        return web.json_response(
            {"error": "send Authorization: Bearer <CONCORD_API_TOKEN>"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="concord"'},
        )

    return guard
