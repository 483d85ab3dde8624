"""llama-swap's collating scheduler, ported to the tiering bench (a baseline, bench only).

``bench/tiering.py`` replays its traces through this as the ``llama_swap`` policy, on
the same virtual-time loop, with the same :class:`~coe_router.experts.tiering.tiers.
ExpertResidency` objects and the same :class:`~coe_router.experts.tiering.drivers.
VLLMSleepDriver` calls into the same fake vLLM replicas as the real pool: only the
decisions (which request goes in, which expert sleeps, which wakes) are llama-swap's.

Ported from github.com/mostlygeek/llama-swap at commit ``0bdb3720`` (2026-08):

* ``internal/router/scheduler/fifo.go``: ``FIFO.OnRequest`` (the decision tree below),
  ``drainQueue``, ``OnSwapDone``, ``OnServeDone``, ``OnCancel``, ``collidesWith``,
  ``conflictsWithInFlight``, ``runningSet``; ``enqueue`` keeps arrival order when all
  models have the default priority (0), as here.
* ``internal/router/base.go`` ``doSwap``: stop the evicted models in parallel, wait for
  all of them, then start the target; the result comes back as ``OnSwapDone``.
* ``internal/matrix/program.go`` ``Program.Solve`` (the ``matrix`` router's swapper,
  the one that "weighs eviction cost"): among the sets that contain the target, take
  the one whose running models *outside* it have the lowest total ``evict_costs``
  (default 1 each); equal costs keep definition order; a target already running evicts
  nothing.

Collation arrived with PR #790 (commit ``02e015fa``, "Introduce new routing backend"):
"requests for models in this order ABCABC would result in 5 swaps. Now those requests
are handled in this order AABBCC", and "a possible future enhancement is to support a
starvation parameter so swap can be forced when models have been waiting too long".
PR #823 moved the same decision tree into ``scheduler/fifo.go``; issue #797 calls the
collation "more of an emergent property than a scheduling one". It comes from four rules:

1. a request for a model whose swap is in flight joins that swap (one load serves all);
2. a request for a ready model that nobody is evicting is served at once (fast path),
   even when older requests for other models are queued;
3. a request whose swap would evict a model still serving requests waits in the queue
   (``conflictsWithInFlight``), as does one that would collide with a swap in flight;
4. when a swap finishes, or a model's last in-flight request ends, the queue is walked
   in arrival order and every request that can now start a swap (or join one, or take
   the fast path) does: the group whose oldest request is oldest goes first.

There is no starvation bound: while the model a queued request would evict keeps
receiving requests (rule 2) its in-flight count may never reach zero, and the queued
request waits (until the client gives up).

How the bench configures it: the matrix is "any ``K`` of the ``N`` experts", i.e. every
``K``-subset of the catalog as one set, in ``itertools.combinations`` order (a user
would list them in catalog order too); ``evict_costs`` are each expert's wake time from
its eviction tier, in whole seconds (at least 1), so identical experts cost the same and
definition order breaks the tie, as in llama-swap. llama-swap's per-model admission cap
(``concurrencyLimit``, default 10 requests queued or in flight, 429 beyond) is left out
(as if set above the trace's peak) so that no request is refused that ours would have
served; the replicas' own ``max_num_seqs`` applies to both. A request that waited the
bench's ``queue_timeout_s`` is cancelled, as a client giving up would be (``OnCancel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coe_router.errors import UpstreamTimeout, UpstreamUnavailable
from coe_router.experts.tiering.tiers import ExpertResidency, Tier


@dataclass(frozen=True)
class Matrix:
    """llama-swap's matrix swapper: the allowed model sets and the cost of losing each."""

    #: Sets of models that may run together, in definition order (ties go to the first).
    sets: tuple[frozenset[str], ...]
    #: Relative cost of losing a running model; absent means 1 (llama-swap's default).
    evict_costs: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def any_k_of(cls, names: Sequence[str], k: int, evict_costs: Mapping[str, int]) -> Matrix:
        """Every ``k``-subset of ``names`` as one set, in ``itertools.combinations`` order."""
        sets = tuple(frozenset(c) for c in itertools.combinations(names, k))
        return cls(sets, dict(evict_costs))

    def eviction_for(self, target: str, running: Sequence[str]) -> list[str]:
        """The running models to stop so that ``target`` can run (``Program.Solve``)."""
        if target in running:
            return []
        best: frozenset[str] | None = None
        best_cost = -1
        for s in self.sets:
            if target not in s:
                continue
            cost = sum(self.evict_costs.get(m, 1) for m in running if m not in s)
            if best is None or cost < best_cost:  # strict: equal costs keep definition order
                best, best_cost = s, cost
        if best is None:  # in no set: it runs alone
            return list(running)
        return [m for m in running if m not in best]


@dataclass
class _Request:
    """One request waiting for a decision (llama-swap's ``HandlerReq``)."""

    model: str
    future: asyncio.Future[None]
    since: float


@dataclass
class _Swap:
    """One swap in flight and the requests it will serve (``activeSwap``)."""

    evict: list[str]
    waiters: list[_Request]


class CollationScheduler:
    """llama-swap's FIFO scheduler with collation, over the bench's expert residencies.

    Offers what the bench's replay uses of :class:`~coe_router.experts.tiering.scheduler.
    TierScheduler`: ``experts``, ``start``, ``hold``, ``aclose``. Decisions run
    synchronously in the event loop (llama-swap's single run loop); swaps run as tasks.
    """

    def __init__(
        self,
        experts: Iterable[ExpertResidency],
        matrix: Matrix,
        *,
        queue_timeout_s: float = 600.0,
        clock: Callable[[], float],
    ) -> None:
        self.experts = {e.name: e for e in experts}
        self.matrix = matrix
        self.queue_timeout_s = queue_timeout_s
        self._clock = clock
        self._active: dict[str, _Swap] = {}
        self._queued: list[_Request] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn each expert's actual tier."""
        tiers = await asyncio.gather(*(e.driver.probe() for e in self.experts.values()))
        for e, tier in zip(self.experts.values(), tiers, strict=True):
            e.tier = tier

    async def preload(self, names: Sequence[str], keep: int) -> None:
        """Start-up as the bench's other pools do it: load each of ``names`` once, in order,
        so that the last ``keep`` end hot and the others asleep at their sleep level."""
        for i, name in enumerate(names):
            if i >= keep:
                old = self.experts[names[i - keep]]
                old.tier = await old.driver.sleep(old.sleep_level)
            e = self.experts[name]
            await e.driver.wake(e.tier)
            e.tier, e.woke_at = Tier.HOT, self._clock()

    async def aclose(self) -> None:
        """Cancel swaps in progress and fail whoever still waits."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        waiting = self._queued + [r for sw in self._active.values() for r in sw.waiters]
        for req in waiting:
            if not req.future.done():
                req.future.set_exception(UpstreamUnavailable("the gateway is shutting down"))

    # --- the request path --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Serve one request on ``name``: wait for llama-swap's grant, release when done
        (llama-swap's handler ``defer``s the release; an exit stack is that ``defer``)."""
        async with contextlib.AsyncExitStack() as deferred:
            await self.acquire(name)
            deferred.callback(self.release, name)
            yield

    async def acquire(self, name: str) -> None:
        """Wait until the scheduler grants ``name`` to this request."""
        now = self._clock()
        self.experts[name].record_use(now)  # statistics only: llama-swap decides without them
        req = _Request(name, asyncio.get_running_loop().create_future(), now)
        self._on_request(req)
        try:
            await asyncio.wait_for(asyncio.shield(req.future), self.queue_timeout_s)
        except TimeoutError:
            if not _granted(req):
                self._on_cancel(req)
                raise UpstreamTimeout(
                    f"waited {self.queue_timeout_s:.0f} s for expert {name!r}"
                ) from None

    def release(self, name: str) -> None:
        """``OnServeDone``: one request on ``name`` finished; retry the queue when idle."""
        e = self.experts[name]
        e.in_flight -= 1
        e.last_used = self._clock()
        if e.in_flight <= 0:
            self._drain_queue()

    # --- llama-swap's decision tree ------------------------------------------------------------

    def _on_request(self, req: _Request) -> None:
        """``FIFO.OnRequest``: join, fast path, queue, or start a swap."""
        if req.model in self._active:  # (2) join the swap in flight for the same model
            self._active[req.model].waiters.append(req)
            return
        if not self._decide(req):
            self._queued.append(req)  # (4)/(5): default priority keeps arrival order

    def _decide(self, req: _Request) -> bool:
        """Steps (3)-(6) for a request with no swap of its own in flight: False = queue."""
        running = self._running_set(req.model)
        evict = self.matrix.eviction_for(req.model, running)
        collides = self._collides(req.model, evict)
        if self._ready(req.model) and not evict and not collides:  # (3) fast path
            self._grant(req)
            return True
        if collides:  # (4) would stop a swap's target, or be stopped by one
            return False
        if any(self.experts[m].in_flight > 0 for m in evict):  # (5) would evict a busy model
            return False
        self._start_swap(req, evict)  # (6)
        return True

    def _drain_queue(self) -> None:
        """``drainQueue``: walk the queue in order; what can go now goes."""
        pending, self._queued = self._queued, []
        for req in pending:
            if req.future.done():  # the client went away meanwhile
                continue
            if req.model in self._active:
                self._active[req.model].waiters.append(req)
            elif not self._decide(req):
                self._queued.append(req)

    def _on_swap_done(self, model: str, error: Exception | None) -> None:
        """``OnSwapDone``: serve (or fail) every waiter of the swap, then drain the queue."""
        swap = self._active.pop(model, None)
        if swap is None:
            return
        for req in swap.waiters:
            if error is None:
                self._grant(req)
            elif not req.future.done():
                req.future.set_exception(
                    UpstreamUnavailable(f"expert {model!r} failed to start: {error}")
                )
        self._drain_queue()

    def _on_cancel(self, req: _Request) -> None:
        """``OnCancel``: forget a request whose client gave up."""
        if not req.future.done():
            req.future.cancel()
        self._queued = [r for r in self._queued if r is not req]
        for swap in self._active.values():
            swap.waiters = [r for r in swap.waiters if r is not req]

    # --- helpers ---------------------------------------------------------------------------------

    def _ready(self, model: str) -> bool:
        """``process.StateReady``: loaded and not being stopped."""
        e = self.experts[model]
        return e.tier == Tier.HOT and e.transition is None

    def _running_set(self, exclude_active: str) -> list[str]:
        """Models not stopped (ready, starting, stopping), plus the other swaps' targets."""
        running = {n for n, e in self.experts.items() if e.tier == Tier.HOT or e.transition}
        running |= {m for m in self._active if m != exclude_active}
        return sorted(running)

    def _collides(self, target: str, evict: Sequence[str]) -> bool:
        """``collidesWith``: whether this swap and one in flight would stop each other."""
        for model, swap in self._active.items():
            if model == target:
                continue
            if model in evict or target in swap.evict or set(evict) & set(swap.evict):
                return True
        return False

    def _grant(self, req: _Request) -> None:
        """``grantHandler``: count it in flight only if the caller is still there."""
        if req.future.done():
            return
        self.experts[req.model].in_flight += 1
        req.future.set_result(None)

    def _start_swap(self, req: _Request, evict: list[str]) -> None:
        """Record the swap as active, then run ``doSwap`` in the background."""
        self._active[req.model] = _Swap(list(evict), [req])
        for m in evict:  # their processes are stopping from now on
            self.experts[m].transition = "sleeping"
        task = asyncio.get_running_loop().create_task(self._do_swap(req.model, evict))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _do_swap(self, model: str, evict: list[str]) -> None:
        """``doSwap``: stop the evicted models in parallel, then start ``model``."""
        error: Exception | None = None
        try:
            await asyncio.gather(*(self._stop(self.experts[m]) for m in evict))
            await self._start(self.experts[model])
        except Exception as exc:  # reported to the waiters, as llama-swap's SwapDone.Err
            error = exc
        self._on_swap_done(model, error)

    async def _stop(self, e: ExpertResidency) -> None:
        e.transition = "sleeping"
        try:
            e.tier = await e.driver.sleep(e.sleep_level)
            e.sleeps += 1
        finally:
            e.transition = None

    async def _start(self, e: ExpertResidency) -> None:
        if e.tier == Tier.HOT:
            return
        from_tier, t0 = e.tier, self._clock()
        e.transition, e.wake_started = "waking", t0
        try:
            await e.driver.wake(from_tier)
        finally:
            e.transition = None
        e.tier, e.woke_at = Tier.HOT, self._clock()
        e.record_wake(from_tier, self._clock() - t0)


def _granted(req: _Request) -> bool:
    f = req.future
    return f.done() and not f.cancelled() and f.exception() is None
