"""The keyword router: category by whole-word hits, then the cheapest expert for it."""

from __future__ import annotations

from typing import Any

import pytest

from coe_router.catalog import Catalog, VirtualModelSpec
from coe_router.errors import ConfigError
from coe_router.protocol import ChatMessage
from coe_router.routing import ROUTER_CLS, RoutingDecision, build_router
from coe_router.routing.keyword import KeywordRouter

KEYWORDS = {
    "code": ["python", "function", "bug", "class", "c++", "c#", ".py", "stack trace"],
    "writing": ["poem", "essay", "story"],
    "science": ["physics"],  # no expert declares it: the generalist takes it
}


def expert(name: str, categories: list[str], cost: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "served_model_name": f"m-{name}",
        "replicas": [f"http://{name}:8000"],
        "categories": categories,
        "cost": cost,
        **extra,
    }


def catalog(keywords: dict[str, list[str]] | None = None) -> Catalog:
    return Catalog.model_validate(
        {
            "experts": [
                expert("big-coder", ["code"], 5),
                expert("general", ["general", "writing"], 1, generalist=True),
                expert("small-coder", ["code"], 2),
            ],
            "keywords": KEYWORDS if keywords is None else keywords,
        }
    )


def user(content: Any) -> ChatMessage:
    return ChatMessage(role="user", content=content)


async def route(*messages: ChatMessage | str, **options: Any) -> RoutingDecision:
    msgs = [user(m) if isinstance(m, str) else m for m in messages]
    return await KeywordRouter(catalog(), options).route(msgs)


# --- categories and experts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "category", "expert"),
    [
        ("Why does this Python script crash?", "code", "small-coder"),
        ("Write a poem about autumn", "writing", "general"),
        ("Explain the physics of a rainbow", "science", "general"),
    ],
)
async def test_prompt_goes_to_its_category_and_the_cheapest_expert_for_it(
    prompt: str, category: str, expert: str
) -> None:
    decision = await route(prompt)
    assert decision.category == category
    assert decision.expert == expert
    assert decision.strategy == "keyword"
    assert decision.confidence > 0


async def test_unmatched_prompt_goes_to_the_generalist_at_zero_confidence() -> None:
    decision = await route("What a lovely day it is")
    assert decision == RoutingDecision(
        expert="general",
        category="general",
        confidence=0.0,
        strategy="keyword",
        alternatives=(),
        reason="no keyword matched; the generalist answers",
    )


async def test_generalist_is_the_first_expert_when_none_is_marked() -> None:
    data = {"experts": [expert("first", [], 1), expert("second", [], 1)]}
    router = KeywordRouter(Catalog.model_validate(data), {})
    assert (await router.route([user("anything")])).expert == "first"


# --- confidence --------------------------------------------------------------------------------


async def test_more_hits_give_more_confidence() -> None:
    one = await route("python")
    two = await route("python function")
    three = await route("python function with a bug")
    assert 0 < one.confidence < two.confidence < three.confidence < 1
    assert (one.confidence, two.confidence, three.confidence) == (0.5, 0.75, 0.875)


async def test_competing_hits_lower_confidence_and_show_as_alternatives() -> None:
    alone = await route("python function")
    contested = await route("python function in a poem")
    assert contested.category == "code"
    assert contested.confidence < alone.confidence
    assert contested.confidence == round(2 / 3 * 0.75, 4)
    # Alternatives are on the confidence scale: share 1/3, one hit.
    assert [(c.expert, c.score) for c in contested.alternatives] == [
        ("general", round(1 / 3 * 0.5, 4))
    ]
    assert alone.alternatives == ()


async def test_the_category_with_most_hits_wins() -> None:
    decision = await route("a poem, an essay and a story about one python")
    assert decision.category == "writing"
    assert decision.expert == "general"
    assert [c.expert for c in decision.alternatives] == ["small-coder"]


async def test_a_word_repeated_counts_once() -> None:
    assert (await route("python python python")).confidence == (await route("python")).confidence


async def test_matching_ignores_case() -> None:
    assert (await route("PYTHON Function")).confidence == 0.75


# --- what counts as a hit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "run main.py please",
        "I like C++ templates",
        "c++",
        "compile this C# snippet",
        "a class, then",
        "(class)",
        "here is the stack trace:",
        "python3? no: python",
    ],
)
async def test_keywords_match(prompt: str) -> None:
    assert (await route(prompt)).category == "code"


@pytest.mark.parametrize(
    "prompt",
    [
        "classical music",  # "class" must not match inside a word
        "a subclass",
        "the classes",
        "pythonic prose",
        "functional areas",
        "ambug",
        "abc++",  # "c++" needs a word start
        "main.pyc",  # ".py" needs a word end
        "stack of traces",
    ],
)
async def test_keywords_match_whole_words_only(prompt: str) -> None:
    decision = await route(prompt)
    assert decision.category == "general", decision
    assert decision.confidence == 0


# --- conversation ------------------------------------------------------------------------------


async def test_earlier_user_turns_count_at_half_weight() -> None:
    decision = await route(
        "please fix the python function",  # earlier: 2 code hits -> 1.0
        ChatMessage(role="assistant", content="Here is a poem, an essay and a story."),
        "now write a poem",  # latest: 1 writing hit -> 1.0
    )
    # 1.0 each: a tie, where full weight would have made it code 2.0 to writing 1.0
    # (and counting the assistant's words would have tipped it to writing).
    assert decision.confidence == 0.5 * (1 - 0.5**1.0)
    assert [c.score for c in decision.alternatives] == [0.5 * (1 - 0.5**1.0)]
    three = await route("python function bug", "a poem")  # 1.5 code vs 1.0 writing
    assert three.category == "code"
    assert three.confidence == round(1.5 / 2.5 * (1 - 0.5**1.5), 4)
    assert [(c.expert, c.score) for c in three.alternatives] == [("general", 0.4 * 0.5)]
    assert "1.5 weighted" in (three.reason or "")


async def test_latest_turn_outweighs_one_earlier_hit() -> None:
    decision = await route("python please", "now a poem")
    assert decision.category == "writing"
    # code: 0.5 weighted hit of 1.5 in all.
    assert [(c.expert, c.score) for c in decision.alternatives] == [
        ("small-coder", round(0.5 / 1.5 * (1 - 0.5**0.5), 4))
    ]


async def test_only_user_turns_count() -> None:
    decision = await route(
        ChatMessage(role="system", content="You are a python function expert."),
        ChatMessage(role="assistant", content="python function bug"),
        "hello",
    )
    assert decision.category == "general"
    assert decision.confidence == 0


async def test_earlier_turn_alone_still_routes() -> None:
    decision = await route("python function", "thanks, and one more thing")
    assert decision.category == "code"
    assert decision.confidence == 0.5  # 2 hits at half weight = 1.0


async def test_multi_part_content_counts_its_text_parts() -> None:
    content = [
        {"type": "text", "text": "what is wrong with this python"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "function?"},
    ]
    decision = await route(user(content))
    assert decision.category == "code"
    assert decision.confidence == 0.75


@pytest.mark.parametrize(
    "content",
    [
        None,
        [],
        [{"type": "image_url", "image_url": {"url": "http://x/python.png"}}],
        [{"type": "input_audio", "text": "python"}],  # only text parts count
    ],
)
async def test_content_without_text_goes_to_the_generalist(content: Any) -> None:
    decision = await route(user(content))
    assert decision.expert == "general"
    assert decision.confidence == 0


# --- options -----------------------------------------------------------------------------------


async def test_keywords_option_replaces_the_catalog_lists() -> None:
    options = {"keywords": {"code": ["rust"]}}
    assert (await route("rust", **options)).expert == "small-coder"
    assert (await route("python", **options)).confidence == 0


async def test_category_without_an_expert_maps_to_the_generalist() -> None:
    router = KeywordRouter(catalog({"law": ["contract"]}), {})
    decision = await router.route([user("review this contract")])
    assert decision.category == "law"
    assert decision.expert == "general"


async def test_blank_keywords_match_nothing() -> None:
    router = KeywordRouter(catalog({"code": ["", "  ", "python"], "writing": [""]}), {})
    assert (await router.route([user("hello")])).confidence == 0
    assert (await router.route([user("python")])).category == "code"


async def test_category_with_no_words_never_matches() -> None:
    router = KeywordRouter(catalog({"code": [], "writing": ["poem"]}), {})
    assert (await router.route([user("python code")])).confidence == 0
    assert (await router.route([user("poem")])).category == "writing"


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 0.5},
        {"keywords": {"code": ["python"]}, "fallback": "general"},
    ],
)
def test_unknown_option_is_a_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unknown options"):
        KeywordRouter(catalog(), options)


@pytest.mark.parametrize(
    "keywords",
    [["python"], {"code": "python"}, {"code": [1, 2]}, "python"],
)
def test_malformed_keywords_option_is_a_config_error(keywords: Any) -> None:
    with pytest.raises(ConfigError, match="'keywords' must map categories to word lists"):
        KeywordRouter(catalog(), {"keywords": keywords})


async def test_build_router_makes_a_keyword_router_from_the_catalog() -> None:
    assert ROUTER_CLS["keyword"] is KeywordRouter
    spec = VirtualModelSpec(name="coe", router="keyword", options={"keywords": {"code": ["go"]}})
    router = build_router(spec, catalog())
    assert (await router.route([user("go")])).expert == "small-coder"


def test_build_router_rejects_an_unknown_strategy() -> None:
    with pytest.raises(ConfigError, match="unknown router 'nope'"):
        build_router(VirtualModelSpec(name="coe", router="nope"), catalog())
