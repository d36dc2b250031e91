"""Strangers and the read API, through the real worker: the token, loopback without it, the
phone search's rate limit and silence in the log, and phone hashes nobody can recompute."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from concord.cli import cli
from tests.integration.browser import headless_page
from tests.integration.harness import WorkerProcess, produce, read_all

pytestmark = pytest.mark.integration

TOKEN = "api-token-of-the-integration-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PHONE = "+86 138 0013 8000"
DIGITS = "13800138000"
ORDER = "SO-PHONE-1"
PROTECTED = ["/kpis", f"/orders/{ORDER}", f"/orders?phone={DIGITS}", "/scorecard", "/router/", "/"]


def _placed(order_id: str) -> dict:
    placed = datetime.now(UTC) - timedelta(minutes=5)
    return {
        "event_id": f"erp-{order_id}-1",
        "source": "erp",
        "order_ref": order_id,
        "status": "CREATED",
        "occurred_at": placed.isoformat(),
        "order": {
            "customer_id": "C-4711",
            "channel": "website",
            "lines": [{"sku": "BRK-PAD-0001", "qty": 2, "unit_price": "35.00"}],
            "amount": "70.00",
            "currency": "CNY",
            "customer_phone": PHONE,
            "placed_at": placed.isoformat(),
        },
    }


def _wait_for(what: str, check, worker: WorkerProcess, within: float = 90.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(0.5)
    raise AssertionError(f"{what}: never\n{worker.log_tail()}")


def _phone_search(worker: WorkerProcess, client: httpx.Client | None = None) -> httpx.Response:
    get = client.get if client is not None else httpx.get
    return get(worker.url("/orders"), params={"phone": PHONE}, headers=BEARER, timeout=10)


def _found(answer: httpx.Response) -> list[str]:
    return [o["order_id"] for o in answer.json()["orders"]] if answer.status_code == 200 else []


def _use_the_desk_with_the_token(worker: WorkerProcess) -> None:
    """The desk asks for the token once, asks again when it is refused, then works."""
    with headless_page() as page:
        page.goto(worker.url("/desk"))
        page.wait_for_selector("#login:not([hidden])")
        assert "requires its API token" in page.inner_text("#login")
        page.fill("#token", "not-the-token-of-this-worker")
        page.press("#token", "Enter")
        page.wait_for_selector("#login-why:has-text('refused')")
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.wait_for_selector("#tiles .tile")
        assert page.locator("#login").is_hidden()

        page.fill("#q", PHONE)
        page.press("#q", "Enter")
        page.wait_for_selector(f'#result .card[data-order="{ORDER}"]')
        assert DIGITS not in page.inner_text("#result")

        page.reload()  # the same tab: the token is kept, not asked for again
        page.wait_for_selector("#tiles .tile")
        assert page.locator("#login").is_hidden()


def _cli(*args: str, token: str | None = None) -> tuple[int, str]:
    """A `concord` command's exit code and output (whitespace folded: rich wraps lines)."""
    env = {"CONCORD_API_TOKEN": token} if token else {}
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, " ".join(result.output.split())


def _scorecard(worker: WorkerProcess) -> dict | None:
    code, output = _cli("scorecard", "--url", worker.url(""), "--json", token=TOKEN)
    return orjson.loads(output) if code == 0 else None


def test_a_worker_with_a_token_guards_its_api_and_keys_its_phone_hashes(
    broker, spawn, prefix, tmp_path: Path
):
    worker = spawn(
        CONCORD_API_TOKEN=TOKEN,
        CONCORD_PHONE_SEARCH_BURST="3",
        CONCORD_PHONE_SEARCH_PER_MINUTE="0.001",  # no refill while the test runs
    )
    bootstrap = f"127.0.0.1:{broker.port}"
    event = _placed(ORDER)
    asyncio.run(produce(bootstrap, [(f"{prefix}.erp.events", ORDER.encode(), orjson.dumps(event))]))
    _wait_for(
        "the order answers",
        lambda: httpx.get(worker.url(f"/orders/{ORDER}"), headers=BEARER, timeout=10).is_success,
        worker,
    )

    # Probes, Prometheus and the desk page itself need no token; everything else does.
    for path in ("/health", "/metrics", "/desk"):
        assert httpx.get(worker.url(path), timeout=10).status_code == 200, path
    for path in PROTECTED:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
            answer = httpx.get(worker.url(path), headers=headers, timeout=10)
            assert answer.status_code == 401, (path, headers)
            assert answer.headers["WWW-Authenticate"] == 'Bearer realm="concord"'
    for path in ("/kpis", f"/orders/{ORDER}", "/router/"):
        assert httpx.get(worker.url(path), headers=BEARER, timeout=10).status_code == 200, path
    # Faust's raw table pages are not served at all.
    assert httpx.get(worker.url("/table/"), headers=BEARER, timeout=10).status_code == 404

    # The phone finds the order (matched on its keyed hash) and is never echoed.
    _use_the_desk_with_the_token(worker)  # one phone search from 127.0.0.1
    found = _phone_search(worker)
    assert _found(found) == [ORDER]
    assert DIGITS not in found.text
    assert "0013" not in found.text

    # Rate limit per client: another loopback address has a bucket of its own (3 searches).
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with other:
        answers = [_phone_search(worker, other) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert int(answers[3].headers["Retry-After"]) >= 1
    assert answers[3].json() == {
        "error": "too many phone searches from this address; try again later"
    }
    assert _phone_search(worker).status_code == 200  # 127.0.0.1's third search

    # The commands that read a worker pass the token (CONCORD_API_TOKEN or --token).
    code, output = _cli("status", "--url", worker.url(""))
    assert (code, output) == (1, f"no worker answers at {worker.url('')} (or it refused the token)")
    code, output = _cli("status", "--url", worker.url(""), token=TOKEN)
    assert code == 0, output
    assert "consistency" in output
    code, output = _cli("scorecard", "--url", worker.url(""), "--json")
    assert code == 1
    assert output.endswith("send Authorization: Bearer <CONCORD_API_TOKEN>")
    card = _wait_for("the scorecard of the order's day", lambda: _scorecard(worker), worker)
    assert card["orders_placed"] == 1

    # The phone's hash on the order-state changelog (read by anyone with topic access) is
    # HMAC-SHA256 under the worker's kept key: not the old public formula, not another key's.
    key_file = tmp_path / "data" / "phone.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip().encode()
    keyed = hmac.new(key, DIGITS.encode(), hashlib.sha256).hexdigest().encode()
    public = hashlib.sha256(f"concord-phone:{DIGITS}".encode()).hexdigest().encode()
    another = hmac.new(b"x" * 32, DIGITS.encode(), hashlib.sha256).hexdigest().encode()
    changelog = asyncio.run(
        read_all(
            bootstrap,
            [f"{prefix}-order-state-changelog"],
            until=lambda rs: any(keyed in (r.value or b"") for r in rs),
        )
    )
    stored = b"\n".join(r.value or b"" for r in changelog)
    assert keyed in stored
    assert public not in stored
    assert another not in stored
    assert DIGITS.encode() not in stored

    # A restart keeps the key: the restored order is still found by its phone.
    assert worker.stop() == 0
    worker.start()
    assert key_file.read_text().strip().encode() == key
    _wait_for(  # the order states are read back and the phone index rebuilt from them
        "the state is restored",
        lambda: httpx.get(worker.url("/kpis"), headers=BEARER, timeout=10).json()["watermark"],
        worker,
    )
    assert _found(_phone_search(worker)) == [ORDER]
    assert worker.stop() == 0

    log = worker.log_path.read_text(errors="replace")
    for secret in (DIGITS, DIGITS[-8:], "0013 8000", TOKEN, key.decode()):
        assert secret not in log, secret
    assert "every path but /desk, /health, /metrics requires the CONCORD_API_TOKEN" in log
    assert f"phone hashes: key from generated in {key_file.resolve()}" in log
    assert f"phone hashes: key from kept in {key_file.resolve()}" in log


def _listening(port: int) -> set[str]:
    """The addresses sockets listen on for `port` (Linux: /proc/net/tcp and tcp6)."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        table = Path("/proc/net") / name
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints the address as 32-bit words in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, packed))
    return found


def test_without_a_token_the_worker_listens_on_loopback_only(spawn):
    worker = spawn()
    assert _listening(worker.web_port) == {"127.0.0.1"}
    assert httpx.get(worker.url("/kpis"), timeout=10).status_code == 200
    _wait_for("the start-up note", lambda: "loopback only" in worker.log_tail(200), worker)
    assert (
        f"read API on 127.0.0.1:{worker.web_port}, loopback only: no CONCORD_API_TOKEN is set"
        in worker.log_tail(200)
    )
