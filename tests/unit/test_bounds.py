"""What a client sends cannot grow the gateway's state without bound: decision-log entries
have a byte cap, oversized answers are not cached, and the in-process store forgets the
rate-limit windows of callers that went quiet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from coe_router.state import MemoryStore
from tests.unit.conftest import catalog_dict

CHAT = "/v1/chat/completions"


def state(client: httpx.AsyncClient) -> Any:
    return client.app.state.coe  # type: ignore[attr-defined]


async def test_a_decision_log_entry_fits_its_byte_cap(make_client: Callable[..., Any]) -> None:
    cap = 4096
    client = await make_client(
        decision_log={"enabled": True, "max_prompt_chars": 10**6, "max_entry_bytes": cap}
    )
    # 4-byte characters: a character cap alone would let this entry hold a megabyte.
    prompt = "fix this python function " + "\U0001f600" * 250_000 + " END"
    messages = [{"role": "user", "content": prompt}]
    resp = await client.post(CHAT, json={"model": "coe", "messages": messages})
    assert resp.status_code == 200, resp.text
    await state(client).shared.background.drain()
    [(_, entry)] = await state(client).shared.store.read("decisions")
    size = sum(len(k) + len(v.encode()) for k, v in entry.items())
    assert cap - 8 <= size <= cap
    assert entry["prompt"].endswith("\U0001f600 END")  # the tail is what is kept
    assert entry["prompt"].encode().decode() == entry["prompt"]  # cut on a character


async def test_answers_over_the_cache_entry_cap_are_not_cached(
    make_client: Callable[..., Any],
) -> None:
    catalog = catalog_dict()
    catalog["virtual_models"][0]["cache_ttl_s"] = 60
    for cap, expected in ((10**6, "hit"), (64, "miss")):
        client = await make_client(catalog=catalog, cache={"max_entry_bytes": cap})
        for stream in (False, True):
            body = {"model": "coe", "messages": [{"role": "user", "content": "hi"}],
                    "stream": stream}  # fmt: skip
            await client.post(CHAT, json=body)
            await state(client).shared.background.drain()
            again = await client.post(CHAT, json=body)
            assert again.headers["x-coe-cache"] == expected, (cap, stream)


async def test_windows_of_idle_callers_are_forgotten() -> None:
    store = MemoryStore()
    for i in range(1000):
        assert (await store.hit(f"ip:10.0.{i // 256}.{i % 256}", 0.0, 5, None)).allowed
    # Two windows later (the sliding estimate reads only the last one): all but the new
    # caller are gone. Internal state, as memory use is: nothing public shows it.
    await store.hit("ip:192.0.2.1", 180.0, 5, None)
    assert list(store._windows) == ["ip:192.0.2.1"]
    # A caller active in the previous window keeps its count.
    await store.hit("a", 240.0, 1, None)
    assert not (await store.hit("a", 270.0, 1, None)).allowed
