"""The HTTP side over real TCP: a real aiohttp client against the daemon's web server.

Good requests, and the hostile ones a public endpoint gets: wrong origin,
huge body, bad JSON, floods.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest

from ctrackd.attribution.dynamic import DynamicPlan
from ctrackd.attribution.pools import PoolSpec
from ctrackd.configcalls import PromoConfig
from ctrackd.configdynamic import RateLimit, WebConfig
from ctrackd.web.server import WebServer

ORIGIN = "https://shop.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_plan(overflow: str = "shared", *, pools: bool = True,
              promo: PromoConfig | None = None) -> DynamicPlan:
    counter = itertools.count(1)
    specs = [PoolSpec(name="web", numbers=("+74950000101", "+74950000102"),
                      overflow=overflow)] if pools else []
    return DynamicPlan(specs, new_session_id=lambda: f"session-{next(counter)}",
                       promo=promo, choose_code=random.Random(5).randrange)


async def serve(plan: DynamicPlan | None, clock: Clock, **web: object
                ) -> tuple[WebServer, str]:
    config = WebConfig(host="127.0.0.1", port=0, origins=(ORIGIN,),
                       replace=("+74951234567",), **web)  # type: ignore[arg-type]
    server = WebServer(config, lambda: plan, clock=clock)
    host, port = await server.start()
    return server, f"http://{host}:{port}"


@pytest.fixture
async def site(clock: Clock) -> AsyncIterator[tuple[str, DynamicPlan, aiohttp.ClientSession]]:
    plan = make_plan()
    server, base = await serve(plan, clock)
    async with aiohttp.ClientSession(headers={"Origin": ORIGIN}) as http:
        yield base, plan, http
    await server.stop()


async def ask(http: aiohttp.ClientSession, base: str, **body: object) -> tuple[int, dict]:
    async with http.post(f"{base}/v1/sessions", json=body) as response:
        return response.status, await response.json()


async def test_a_visitor_gets_a_number_and_keeps_it(site) -> None:
    base, plan, http = site
    status, first = await ask(http, base, visitor_id="visitor-a",
                              page="https://shop.example.com/?utm_source=google")
    assert status == 200
    assert first["number"] in ("+74950000101", "+74950000102")
    assert first["replace"] == ["+74951234567"] and first["heartbeat_seconds"] == 30
    assert set(first) == {"session_id", "number", "visit_number", "heartbeat_seconds", "replace"}
    status, again = await ask(http, base, visitor_id="visitor-a",   # a second tab
                              page="https://shop.example.com/cart")
    assert (again["session_id"], again["number"]) == (first["session_id"], first["number"])
    async with http.post(f"{base}/v1/sessions/{first['session_id']}/heartbeat", json={}) as r:
        assert r.status == 200
    assert plan.sessions[first["session_id"]].source == "google"


async def test_overflow_is_shared_and_counted(site) -> None:
    base, plan, http = site
    numbers = [(await ask(http, base, visitor_id=f"visitor-{i}"))[1]["number"] for i in range(3)]
    assert len(set(numbers[:2])) == 2 and numbers[2] in numbers[:2]
    assert plan.pools["web"].overflows == 1


async def test_cors_only_for_the_site(site) -> None:
    base, _, http = site
    async with http.post(f"{base}/v1/sessions", json={"visitor_id": "v"}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    async with http.post(f"{base}/v1/sessions", json={"visitor_id": "v"},
                         headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 403 and (await r.json())["error"] == "origin not allowed"
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.options(f"{base}/v1/sessions", headers={
            "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Headers"] == "Content-Type"
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize("data, content_type, status, message", [
    (b"{not json", "application/json", 400, "the body is not valid JSON"),
    (b"[1, 2]", "application/json", 400, "the body must be a JSON object"),
    (b"{}", "application/json", 400, "visitor_id"),
    (b'{"visitor_id": "v"}', "text/plain", 415, "send JSON"),
    (b"\xff\xfe", "application/json", 400, "the body is not valid JSON"),
    (b'{"visitor_id": "' + b"x" * 20000 + b'"}', "application/json", 413, "body larger than"),
])
async def test_bad_requests_get_clear_json_errors(site, data: bytes, content_type: str,
                                                  status: int, message: str) -> None:
    base, _, http = site
    async with http.post(f"{base}/v1/sessions", data=data,
                         headers={"Content-Type": content_type}) as r:
        assert r.status == status
        assert message in (await r.json())["error"]


async def test_unknown_session_and_paths(site) -> None:
    base, _, http = site
    async with http.post(f"{base}/v1/sessions/nope/heartbeat", json={}) as r:
        assert r.status == 404 and "ask for a number again" in (await r.json())["error"]
    async with http.get(f"{base}/v1/admin") as r:
        assert r.status in (404, 405) and "error" in await r.json()
    async with http.get(f"{base}/v1/sessions") as r:
        assert r.status == 405 and (await r.json())["error"] == "method not allowed"


async def test_snippet_and_health(site) -> None:
    base, _, http = site
    async with http.get(f"{base}/ctrack.js") as r:
        assert r.status == 200 and r.content_type == "application/javascript"
        assert "MutationObserver" in await r.text()
    async with http.get(f"{base}/healthz") as r:
        assert (await r.json())["status"] == "ok"


async def test_a_flood_from_one_address_is_cut(clock: Clock) -> None:
    server, base = await serve(make_plan(), clock, rate_limit=RateLimit(per_minute=60, burst=5))
    try:
        async with aiohttp.ClientSession(headers={"Origin": ORIGIN}) as http:
            statuses = [(await ask(http, base, visitor_id=f"f{i}"))[0] for i in range(8)]
            assert statuses == [200] * 5 + [429] * 3
            async with http.post(f"{base}/v1/sessions", json={"visitor_id": "x"}) as r:
                assert r.headers["Retry-After"] == "1"
            clock.now += 2.0  # one token a second comes back
            assert (await ask(http, base, visitor_id="later"))[0] == 200
    finally:
        await server.stop()


async def test_without_a_plan_it_says_so(clock: Clock) -> None:
    server, base = await serve(None, clock)
    try:
        async with aiohttp.ClientSession(headers={"Origin": ORIGIN}) as http:
            status, body = await ask(http, base, visitor_id="v")
            assert status == 503 and "not configured" in body["error"]
    finally:
        await server.stop()


@pytest.mark.parametrize("pools", [True, False], ids=["with-pools", "promo-only"])
async def test_a_visitor_gets_a_promo_code_and_keeps_it(clock: Clock, pools: bool) -> None:
    plan = make_plan(pools=pools, promo=PromoConfig(length=4, check_digit=False))
    server, base = await serve(plan, clock)
    try:
        async with aiohttp.ClientSession(headers={"Origin": ORIGIN}) as http:
            status, first = await ask(http, base, visitor_id="visitor-a")
            assert status == 200 and set(first) == {
                "session_id", "number", "code", "visit_number", "heartbeat_seconds", "replace"}
            code = first["code"]
            assert isinstance(code, str) and len(code) == 4 and code.isdigit()
            assert (first["number"] is None) is (not pools)  # promo-only: no number to show
            status, tab = await ask(http, base, visitor_id="visitor-a")  # a second tab
            assert (tab["session_id"], tab["code"]) == (first["session_id"], code)
            status, other = await ask(http, base, visitor_id="visitor-b")
            assert other["code"] != code
            clock.now += 30
            async with http.post(f"{base}/v1/sessions/{first['session_id']}/heartbeat",
                                 json={}) as r:
                assert r.status == 200
            found, _ = plan.session_by_code(code, clock.now)
            assert found is not None and found.session_id == first["session_id"]
            async with http.get(f"{base}/healthz") as r:
                assert (await r.json())["promo_codes"] == {
                    "reserved": 2, "space": 10_000, "exhausted": 0}
    finally:
        await server.stop()


async def test_no_code_when_every_code_is_taken(clock: Clock) -> None:
    """A one-digit space (ten codes): the eleventh visitor gets no code, never a duplicate."""
    plan = make_plan(promo=PromoConfig(length=1, check_digit=False))
    server, base = await serve(plan, clock)
    try:
        async with aiohttp.ClientSession(headers={"Origin": ORIGIN}) as http:
            answers = [(await ask(http, base, visitor_id=f"visitor-{i}"))[1] for i in range(11)]
            assert len({a["code"] for a in answers[:10]}) == 10
            assert "code" not in answers[10] and answers[10]["session_id"]
            async with http.get(f"{base}/healthz") as r:
                assert (await r.json())["promo_codes"]["exhausted"] == 1
    finally:
        await server.stop()


async def test_deep_json_and_a_visitor_leaving_mid_body(site) -> None:
    import asyncio

    base, _, http = site
    async with http.post(f"{base}/v1/sessions", data=b"[" * 5000,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "the body is not valid JSON"
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"vis")
    await writer.drain()
    writer.transport.abort()  # gone before the body is complete
    await asyncio.sleep(0.1)
    status, _ = await ask(http, base, visitor_id="after")  # the server is fine
    assert status == 200
