"""What an expert answers cannot stall the gateway through the vote (row 4 of the fault
table): the normalizer is linear in a bounded tail of each answer, and an answer number
past Python's int-to-text limit is still a well-formed response. Real gateway process."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.faults.canned import StartGateway, log_of

CHAT = "/v1/chat/completions"
VOTE = {"model": "coe", "messages": [{"role": "user", "content": "hi"}],
        "coe": {"synthesis": True, "k": 2, "strategy": "vote"}}  # fmt: skip


async def test_answers_full_of_spaces_do_not_block_the_event_loop(
    start_gateway: StartGateway,
) -> None:
    # "answer:" and 800 spaces took the old regexes 8.7 s per answer, on the event loop.
    gw = start_gateway([("a", "spaces"), ("b", "spaces")])
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        worst = 0.0

        async def probe_health(stop: asyncio.Event) -> None:
            nonlocal worst
            while not stop.is_set():
                started = time.monotonic()
                assert (await client.get("/health")).status_code == 200
                worst = max(worst, time.monotonic() - started)
                await asyncio.sleep(0.02)

        stop = asyncio.Event()
        prober = asyncio.create_task(probe_health(stop))
        started = time.monotonic()
        votes = await asyncio.gather(*(client.post(CHAT, json=VOTE) for _ in range(8)))
        took = time.monotonic() - started
        stop.set()
        await prober
    for resp in votes:
        assert resp.status_code == 200, resp.text
        assert resp.json()["coe"]["strategy"] == "synthesis-vote"
    assert took < 5, took
    assert worst < 1.0, f"/health waited {worst:.2f} s behind the vote"


async def test_a_number_beyond_the_int_limit_is_no_500(start_gateway: StartGateway) -> None:
    gw = start_gateway([("a", "commas"), ("b", "commas")])
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        for stream in (False, True):
            resp = await client.post(CHAT, json={**VOTE, "stream": stream})
            assert resp.status_code in (200, 502), resp.text
            for leak in ("ValueError", "Exceeds the limit", "int_max_str_digits", "Traceback"):
                assert leak not in resp.text
            if stream:
                assert resp.text.endswith("data: [DONE]\n\n")
            else:
                assert resp.json()["choices"][0]["message"]["content"].startswith("1,2,3")
    assert "Traceback" not in log_of(gw)
