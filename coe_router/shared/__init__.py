"""Features built on the shared store, FastAPI-free: what several gateways must agree on.

* :mod:`.ratelimit`: per-key (or per-address) request and token limits;
* :mod:`.cache`: the exact-match response cache;
* :mod:`.affinity`: a conversation stays on its expert across turns;
* :mod:`.decision_log`: every routing decision, for replay;
* :mod:`.tier_table`: the fleet's tier table and device leases;
* :mod:`.services`: opens the store and builds the above for one gateway.

Each talks to :class:`coe_router.state.StateStore` only, through a
:class:`coe_router.state.StateGuard`, and degrades to "skipped" when the store fails.
"""
