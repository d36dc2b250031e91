"""Who may read the API: the bearer token (compared in constant time), or loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from concord.cli import cli
from schemas.settings import Settings, SettingsError
from streams import web_access
from streams.web_access import (
    OPEN_PATHS,
    bearer_matches,
    check_exposure,
    is_loopback,
    token_guard,
)

TOKEN = "the-api-token-of-the-tests"


def test_only_the_exact_bearer_token_matches() -> None:
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN)
    assert bearer_matches(f"bearer  {TOKEN} ", TOKEN)  # the scheme is case-insensitive
    assert not bearer_matches(None, TOKEN)
    assert not bearer_matches("", TOKEN)
    assert not bearer_matches(TOKEN, TOKEN)  # no scheme
    assert not bearer_matches(f"Basic {TOKEN}", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN[:-1]}", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN}x", TOKEN)
    assert not bearer_matches("Bearer ", TOKEN)


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(web_access.hmac, "compare_digest", compare_digest)
    assert not bearer_matches("Bearer wrong", TOKEN)
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN)
    assert compared == [(b"wrong", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("worker-1.concord.svc", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_without_a_token_only_loopback_is_served() -> None:
    check_exposure(Settings())  # 127.0.0.1
    check_exposure(Settings(web_host="::1"))
    check_exposure(Settings(web_host="0.0.0.0", api_token=TOKEN))
    with pytest.raises(SettingsError, match="set CONCORD_API_TOKEN"):
        check_exposure(Settings(web_host="0.0.0.0"))


def test_the_worker_command_refuses_a_public_host_without_a_token(tmp_path: Path) -> None:
    env = {"CONCORD_WEB_HOST": "0.0.0.0", "CONCORD_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(cli, ["worker"], env=env)
    assert result.exit_code == 2
    assert "CONCORD_WEB_HOST=0.0.0.0 would serve customers' orders" in result.output
    assert list(tmp_path.iterdir()) == []  # refused before anything started


async def _answers(headers: dict[str, str]) -> dict[str, int]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application(middlewares=[token_guard(TOKEN)])
    paths = [*sorted(OPEN_PATHS), "/kpis", "/orders", "/orders/SO-1", "/router/", "/"]
    for path in paths:
        app.router.add_get(path, ok)
    async with TestClient(TestServer(app)) as client:
        return {path: (await client.get(path, headers=headers)).status for path in paths}


async def test_the_guard_lets_the_token_and_the_open_paths_through() -> None:
    protected = ["/kpis", "/orders", "/orders/SO-1", "/router/", "/"]
    open_ = dict.fromkeys(("/desk", "/health", "/metrics"), 200)
    assert await _answers({}) == {**open_, **dict.fromkeys(protected, 401)}
    wrong = {"Authorization": "Bearer not-the-token"}
    assert await _answers(wrong) == {**open_, **dict.fromkeys(protected, 401)}
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert await _answers(right) == {**open_, **dict.fromkeys(protected, 200)}
