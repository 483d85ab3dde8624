"""The aggregation strategies, by name: ``synthesize``, ``vote``, ``best``.

The names are :data:`coe_router.protocol.AggregationStrategy`; this registry holds one
class per name (checked at import), as routers register in ``ROUTER_CLS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import ClassVar, get_args

from coe_router.aggregation.base import Delta, Merge, Merged, Strategy
from coe_router.aggregation.panel import PanelAnswer
from coe_router.aggregation.synthesize import Synthesize
from coe_router.aggregation.vote import best, vote
from coe_router.protocol import AggregationStrategy


class _Selecting:
    """A strategy that picks one panel answer as it is (no aggregator call)."""

    uses_aggregator: ClassVar[bool] = False

    def __init__(self, pick: Callable[[list[PanelAnswer]], PanelAnswer]) -> None:
        #: Picks the answer to return (and marks what it used).
        self.pick = pick

    async def merge(self, merge: Merge) -> Merged:
        """The picked answer."""
        chosen = self.pick(merge.answers)
        merge.expert = chosen.expert
        return Merged(chosen.text, "stop")

    async def stream(self, merge: Merge) -> AsyncIterator[Delta]:
        """The picked answer in one delta (it is complete already)."""
        merged = await self.merge(merge)
        yield {"role": "assistant", "content": ""}, None
        yield {"content": merged.text}, None
        yield {}, merged.finish_reason


class Vote(_Selecting):
    """The majority final answer (see :mod:`coe_router.aggregation.vote`)."""

    def __init__(self) -> None:
        super().__init__(vote)


class Best(_Selecting):
    """The answer of the expert the router trusted most."""

    def __init__(self) -> None:
        super().__init__(best)


#: Strategy name -> class.
STRATEGIES: dict[str, type[Strategy]] = {"synthesize": Synthesize, "vote": Vote, "best": Best}

if set(STRATEGIES) != set(get_args(AggregationStrategy)):  # pragma: no cover - import check
    raise RuntimeError("STRATEGIES must hold exactly the AggregationStrategy names")
