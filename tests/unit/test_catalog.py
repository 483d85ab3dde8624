"""The expert catalog: what a valid one gives, and how a bad one is reported."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from coe_router.catalog import Catalog, load_catalog
from coe_router.config import Settings
from coe_router.errors import ConfigError
from coe_router.gateway import create_app
from tests.unit.conftest import catalog_dict


def write(tmp_path: Path, data: Any, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def with_changes(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(catalog_dict())
    change(data)
    return data


def problem(tmp_path: Path, data: Any) -> str:
    """The message of the ConfigError that loading ``data`` raises; it names the file."""
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    message = info.value.message
    assert message.startswith(f"catalog {path}: "), message
    return message


# --- a valid catalog ---------------------------------------------------------------------------


def test_valid_catalog_loads(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, catalog_dict()))
    assert [e.name for e in catalog.experts] == ["general", "code"]
    assert catalog.generalist.name == "general"
    assert catalog.expert("code") is not None
    assert catalog.expert("nope") is None
    assert catalog.virtual_model("coe") is not None
    assert catalog.virtual_model("general") is None
    assert catalog.keywords["code"] == ["python", "function", "bug"]


def test_defaults_fill_in_what_is_left_out(tmp_path: Path) -> None:
    data = {"experts": [{"name": "only", "served_model_name": "m", "replicas": ["http://h:1/"]}]}
    catalog = load_catalog(write(tmp_path, data))
    only = catalog.experts[0]
    assert only.replicas == ["http://h:1"]  # trailing slash dropped
    assert only.base_urls == ["http://h:1"]
    assert (only.cost, only.memory_gb, only.required, only.generalist) == (1.0, 0.0, True, False)
    assert [v.name for v in catalog.virtual_models] == ["coe"]
    assert catalog.virtual_models[0].router == "keyword"
    assert catalog.keywords == {}
    assert catalog.generalist.name == "only"  # none marked: the first one


def test_launched_expert_gets_its_url_from_host_and_port(tmp_path: Path) -> None:
    data = {
        "experts": [
            {"name": "local", "served_model_name": "m", "launch": {"model": "m", "port": 8101}}
        ]
    }
    expert = load_catalog(write(tmp_path, data)).experts[0]
    assert expert.launch is not None
    assert expert.base_urls == ["http://127.0.0.1:8101"]


def test_experts_for_a_category_come_cheapest_first() -> None:
    data = {
        "experts": [
            {"name": n, "served_model_name": n, "replicas": [f"http://{n}:1"],
             "categories": ["code"], "cost": c}
            for n, c in (("pricey", 5), ("cheap", 0.5), ("mid", 2))
        ]
    }  # fmt: skip
    catalog = Catalog.model_validate(data)
    assert [e.name for e in catalog.experts_for("code")] == ["cheap", "mid", "pricey"]
    assert catalog.experts_for("law") == []


def test_shipped_catalog_is_valid() -> None:
    catalog = load_catalog(Path(__file__).parents[2] / "deploy" / "local.yaml")
    assert catalog.generalist.name == "general"
    assert {v.name: v.router for v in catalog.virtual_models} == {
        "coe": "category",
        "coe-precise": "category",
        "coe-skills": "skill",
        "coe-retriever": "retriever",
        "coe-synth": "category",
        "coe-keyword": "keyword",
    }
    assert all(v.description for v in catalog.virtual_models)
    assert catalog.virtual_model("coe-synth").synthesis is not None  # type: ignore[union-attr]


async def test_every_strategy_of_the_shipped_catalog_routes() -> None:
    """Each virtual model of the embedded default decides with its own strategy, from the
    shipped router artifact, and sends a coding request to the coder."""
    from coe_router.protocol import ChatMessage
    from coe_router.routing.table import RoutingTable

    table = RoutingTable(load_catalog(Path(__file__).parents[2] / "deploy" / "local.yaml"))
    ask = [ChatMessage(role="user", content="Fix this Python function: def f(x) return x+1")]
    strategies = {}
    for model in table.routers:
        decision = await table.decide(model, ask)
        strategies[model] = decision.strategy
        assert decision.expert == "code", (model, decision)
    assert strategies == {"coe": "category", "coe-precise": "category", "coe-skills": "skill",
                          "coe-retriever": "retriever", "coe-synth": "category",
                          "coe-keyword": "keyword"}  # fmt: skip


# --- field errors name the field ---------------------------------------------------------------


def at(data: dict[str, Any], where: str) -> Any:
    """The part of ``data`` that ``where`` names: ``"experts[1]"``, ``"keywords"``, ``""``."""
    for name, index in re.findall(r"(\w+)(?:\[(\d+)\])?", where):
        data = data[name] if not index else data[name][int(index)]
    return data


def update(where: str, **fields: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets ``fields`` on the mapping at ``where``."""
    return lambda d: at(d, where).update(fields)


def drop(where: str, key: str) -> Callable[[dict[str, Any]], None]:
    """A change that removes ``key`` from the mapping at ``where``."""
    return lambda d: at(d, where).pop(key)


LAUNCH = {"model": "m", "port": 9000}

# (change, the field the message names, what it says about it)
FIELD_ERRORS = {
    "cost": (update("experts[1]", cost=0), "experts[1].cost", "greater than 0"),
    "cost-str": (update("experts[1]", cost="cheap"), "experts[1].cost", "number"),
    "memory": (update("experts[0]", memory_gb=-1),
               "experts[0].memory_gb", "greater than or equal to 0"),
    "missing-field": (drop("experts[0]", "served_model_name"),
                      "experts[0].served_model_name", "required"),
    "typo": (update("experts[1]", gpus=2), "experts[1].gpus", "Extra inputs"),
    "bad-name": (update("experts[0]", name="has space"), "experts[0].name", "pattern"),
    "bad-url": (update("experts[1]", replicas=["ftp://code-a"]),
                "experts[1].replicas", "'ftp://code-a' is not an http(s) URL"),
    "url-without-scheme": (update("experts[1]", replicas=["code-a:8000"]),
                           "experts[1].replicas", "not an http(s) URL"),
    "neither": (update("experts[1]", replicas=[], launch=None),
                "experts[1]", "exactly one of 'replicas'"),
    "both": (update("experts[1]", launch=LAUNCH), "experts[1]", "exactly one of 'replicas'"),
    "launch-port": (update("experts[1]", replicas=[], launch={**LAUNCH, "port": 0}),
                    "experts[1].launch.port", "greater than or equal to 1"),
    "virtual-name": (update("virtual_models[0]", name="co e"), "virtual_models[0].name", "pattern"),
    "keywords": (update("keywords", code="python"), "keywords.code", "list"),
    "no-experts": (update("", experts=[]), "experts", "at least 1"),
    "experts-missing": (drop("", "experts"), "experts", "required"),
    "top-level-typo": (update("", extra=1), "extra", "Extra inputs"),
}  # fmt: skip


@pytest.mark.parametrize(("change", "where", "what"), FIELD_ERRORS.values(), ids=FIELD_ERRORS)
def test_field_errors_name_the_file_and_the_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], where: str, what: str
) -> None:
    message = problem(tmp_path, with_changes(change))
    assert re.search(rf": {re.escape(where)}: [^;]*{re.escape(what)}", message), message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def two(d: dict[str, Any]) -> None:
        d["experts"][0]["cost"] = -1
        d["experts"][1]["memory_gb"] = -1

    message = problem(tmp_path, with_changes(two))
    assert "experts[0].cost" in message
    assert "experts[1].memory_gb" in message


@pytest.mark.parametrize(
    ("change", "what"),
    [
        pytest.param(
            lambda d: d["experts"].append(copy.deepcopy(d["experts"][1])),
            "expert names must be unique; repeated: ['code']",
            id="duplicate-expert",
        ),
        pytest.param(
            lambda d: d["virtual_models"].append({"name": "code"}),
            "virtual model names clash with expert names: ['code']",
            id="virtual-clashes-with-expert",
        ),
        pytest.param(
            lambda d: d["virtual_models"].append({"name": "coe"}),
            "virtual model names must be unique",
            id="duplicate-virtual",
        ),
        pytest.param(
            lambda d: d["experts"][1].update(generalist=True),
            "at most one expert may be the generalist",
            id="two-generalists",
        ),
        pytest.param(
            lambda d: d.update(
                experts=[
                    {"name": n, "served_model_name": n, "launch": {"model": n, "port": 8101}}
                    for n in ("a", "b")
                ]
            ),
            "launched experts need distinct ports",
            id="port-clash",
        ),
    ],
)
def test_inconsistent_catalog_is_rejected(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], what: str
) -> None:
    assert what in problem(tmp_path, with_changes(change))


# --- file errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_catalog(path)
    assert str(path) in info.value.message


def test_invalid_yaml(tmp_path: Path) -> None:
    message = problem(tmp_path, "experts: [unclosed\n  - name: x\n")
    assert "not valid YAML" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n", "", "# only a comment\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "the top level must be a mapping" in problem(tmp_path, text)


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_catalog(tmp_path)
    assert info.value.message.startswith(f"catalog {tmp_path}: cannot read")


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_bytes(b"experts:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert info.value.message.startswith(f"catalog {path}: ")


# --- the app refuses to start on a bad catalog -------------------------------------------------


def test_create_app_with_a_bad_catalog_raises_config_error(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(catalog=with_changes(lambda d: d["experts"][1].update(cost=-3)))
    with pytest.raises(ConfigError, match=r"experts\[1\]\.cost"):
        create_app(settings)


def test_create_app_with_a_missing_catalog_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        create_app(Settings(catalog=tmp_path / "absent.yaml"))


def test_create_app_with_an_unknown_router_raises_config_error(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        catalog=with_changes(lambda d: d["virtual_models"][0].update(router="oracle"))
    )
    with pytest.raises(ConfigError, match=r"unknown router 'oracle'.*known: .*keyword"):
        create_app(settings)


def test_create_app_with_a_bad_router_option_raises_config_error(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        catalog=with_changes(lambda d: d["virtual_models"][0].update(options={"threshold": 0.5}))
    )
    with pytest.raises(ConfigError, match="unknown options"):
        create_app(settings)
