"""The tier table several gateways share: a lease per device and fenced tier writes.

Implements :class:`~coe_router.experts.tiering.tiers.TierCoordinator` on any
:class:`StateStore`. The lease ``tier-device:<device>`` serializes tier changes on a
device across the fleet; each change is written to the table ``tiers`` with the lease's
fencing token, so a gateway whose lease expired (a long pause, a partition) cannot
overwrite what its successor wrote. While the store is down every gateway falls back to
acting alone, as a single gateway does (and the guard counts the failures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid

from coe_router.errors import StateUnavailable
from coe_router.experts.tiering.tiers import SharedTier, Tier
from coe_router.state.base import StateStore
from coe_router.state.guard import StateGuard

TABLE = "tiers"


def _lease(device: str) -> str:
    return f"tier-device:{device}"


class SharedTierTable:
    """Tier leases and the tier table on a shared store."""

    def __init__(
        self, store: StateStore, guard: StateGuard, *, ttl_s: float = 15.0, poll_s: float = 0.2
    ) -> None:
        self._store = store
        self._guard = guard
        self._ttl = ttl_s
        self._poll = poll_s
        #: Unique per gateway process, readable in the table.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renewers: dict[str, asyncio.Task[None]] = {}
        # The store's lease is re-entrant for its owner: without a local lock, two changes
        # of this gateway on one device would share it, and the first unlock would free it
        # under the second.
        self._local: dict[str, asyncio.Lock] = {}

    async def lock(self, device: str, timeout_s: float) -> int | None:
        """Wait for the device lease; keep it renewed until :meth:`unlock`."""
        local = self._local.setdefault(device, asyncio.Lock())
        async with asyncio.timeout(timeout_s):
            await local.acquire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                try:
                    token = await self._guard.call(
                        "tier_lock",
                        lambda: self._store.acquire(_lease(device), self.owner, self._ttl),
                    )
                except StateUnavailable:
                    local.release()
                    return None
                if token is not None:
                    self._renewers[device] = asyncio.create_task(self._renew(device, token))
                    return token
                if loop.time() >= deadline:
                    raise TimeoutError(f"another gateway holds the tier lease of {device!r}")
                await asyncio.sleep(self._poll)
        except BaseException:
            local.release()
            raise

    async def _renew(self, device: str, token: int) -> None:
        # Wakes can outlast the TTL (a cold start takes minutes): renew at a third of it.
        # A renewal the store could not answer (a blip, the guard's back-off) is retried
        # sooner, until the lease has really lapsed (a TTL since the last renewal was sent);
        # one the store refuses means another gateway holds the lease now. Either way the
        # fenced writes then tell the truth.
        loop = asyncio.get_running_loop()
        lapses = loop.time() + self._ttl
        wait = self._ttl / 3
        while True:
            await asyncio.sleep(wait)
            sent = loop.time()
            try:
                ok = await self._guard.call(
                    "tier_renew",
                    lambda: self._store.renew(_lease(device), self.owner, token, self._ttl),
                )
            except StateUnavailable:
                if loop.time() >= lapses:
                    return
                wait = min(self._ttl / 3, max(self._poll, (lapses - loop.time()) / 3))
                continue
            if not ok:
                return
            lapses, wait = sent + self._ttl, self._ttl / 3

    async def publish(self, device: str, token: int, expert: str, entry: SharedTier) -> bool:
        """Fenced write of ``expert``'s entry."""
        value = json.dumps(
            {"tier": entry.tier.value, "transition": entry.transition, "by": self.owner}
        ).encode()
        return await self._guard.quietly(
            "tier_publish",
            lambda: self._store.fenced_set(_lease(device), self.owner, token, TABLE, expert, value),
            False,
        )

    async def unlock(self, device: str, token: int) -> None:
        """Stop renewing and release the lease."""
        task = self._renewers.pop(device, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._guard.quietly(
                "tier_unlock", lambda: self._store.release(_lease(device), self.owner, token), False
            )
        finally:
            self._local[device].release()

    async def table(self) -> dict[str, SharedTier]:
        """Every expert's shared entry; entries that do not parse are skipped."""
        empty: dict[str, bytes] = {}
        raw = await self._guard.quietly("tier_table", lambda: self._store.table(TABLE), empty)
        out: dict[str, SharedTier] = {}
        for expert, value in raw.items():
            try:
                data = json.loads(value)
                out[expert] = SharedTier(Tier(data["tier"]), data.get("transition"))
            except (ValueError, KeyError, TypeError):
                continue
        return out
