"""The expert catalog: which experts exist, where they run, what they are good at.

A YAML file (``Settings.catalog``) validated here. A bad catalog stops start-up
with a :class:`~coe_router.errors.ConfigError` naming the file and the field::

    experts:
      - name: code
        served_model_name: qwen2.5-coder-0.5b-instruct
        categories: [code]
        cost: 2.0
        memory_gb: 2.1
        replicas: ["http://10.0.0.5:8000"]      # or: launch: {model: ..., port: ...}
    virtual_models:
      - name: coe
        router: keyword
    keywords:
      code: [python, function, "stack trace"]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coe_router.errors import ConfigError
from coe_router.protocol import AggregationStrategy

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LaunchSpec(_Strict):
    """A local vLLM (CPU) process the gateway starts and stops itself."""

    #: A checkpoint directory, or the name of a model prepared into ``local.models_dir``.
    model: str
    port: int = Field(ge=1, le=65535)
    host: str = "127.0.0.1"
    dtype: str = "float32"
    max_model_len: int = Field(default=2048, ge=16)
    #: Extra arguments for ``vllm.entrypoints.openai.api_server``.
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"})

    @property
    def base_url(self) -> str:
        """URL of the launched server."""
        return f"http://{self.host}:{self.port}"


class TierSpec(_Strict):
    """How the tiered pool treats an expert (used when ``COE_TIERS__ENABLED``)."""

    #: The device whose memory budget it counts against.
    device: str = "gpu0"
    #: Never evicted.
    pinned: bool = False
    #: Level used when evicted: 1 (warm: weights to CPU RAM) or 2 (cold: weights dropped).
    sleep_level: Literal[1, 2] = 1
    #: The vLLM server runs with ``--enable-sleep-mode`` and ``VLLM_SERVER_DEV_MODE=1``.
    #: Launched local experts are tiered by their process instead.
    sleep_mode: bool = False


class ExpertSpec(_Strict):
    """One expert model: its replicas (or launch spec) and what it is for."""

    name: str = Field(pattern=_NAME)
    served_model_name: str
    replicas: list[str] = Field(default_factory=list)
    launch: LaunchSpec | None = None
    categories: list[str] = Field(default_factory=list)
    #: Relative cost of one request (1.0 = the cheapest expert, by convention).
    cost: float = Field(default=1.0, gt=0)
    #: GPU (or RAM) footprint of one replica, in GB.
    memory_gb: float = Field(default=0.0, ge=0)
    #: Takes whatever no rule claims and low-confidence routes.
    generalist: bool = False
    #: ``/ready`` waits for required experts only.
    required: bool = True
    tier: TierSpec = Field(default_factory=TierSpec)
    description: str = ""

    @field_validator("replicas")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"replica {url!r} is not an http(s) URL")
        return [u.rstrip("/") for u in urls]

    @model_validator(mode="after")
    def _where(self) -> ExpertSpec:
        if bool(self.replicas) == (self.launch is not None):
            raise ValueError("give exactly one of 'replicas' (URLs) or 'launch' (a local process)")
        return self

    @property
    def base_urls(self) -> list[str]:
        """Every replica URL, the launched one included."""
        return [self.launch.base_url] if self.launch else list(self.replicas)


class SynthesisSpec(_Strict):
    """Multi-expert synthesis on by default for a virtual model (e.g. ``coe-synth``)."""

    k: int | None = Field(default=None, ge=1)
    strategy: AggregationStrategy | None = None
    #: The expert that merges the answers; default: the router's choice.
    aggregator: str | None = None


class VirtualModelSpec(_Strict):
    """A model name clients ask for that is routed rather than served."""

    name: str = Field(pattern=_NAME)
    router: str = "keyword"
    description: str = ""
    #: Passed to the router's constructor.
    options: dict[str, Any] = Field(default_factory=dict)
    #: Cache exact repeats of a request for this many seconds (off when unset).
    cache_ttl_s: float | None = Field(default=None, gt=0)
    synthesis: SynthesisSpec | None = None
    #: Cross-expert fallback for this model: how many other experts a request may move to
    #: when its expert cannot answer (0: never); unset follows ``COE_UPSTREAM__FALLBACK_HOPS``.
    fallback_hops: int | None = Field(default=None, ge=0)


class Catalog(_Strict):
    """The whole catalog file."""

    experts: list[ExpertSpec] = Field(min_length=1)
    virtual_models: list[VirtualModelSpec] = Field(
        default_factory=lambda: [VirtualModelSpec(name="coe")]
    )
    #: Category -> words or phrases for the keyword router.
    keywords: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expert names must be unique; repeated: {dupes}")
        clash = sorted(set(names) & {v.name for v in self.virtual_models})
        if clash:
            raise ValueError(f"virtual model names clash with expert names: {clash}")
        vnames = [v.name for v in self.virtual_models]
        if len(set(vnames)) != len(vnames):
            raise ValueError("virtual model names must be unique")
        for v in self.virtual_models:
            agg = v.synthesis.aggregator if v.synthesis else None
            if agg is not None and agg not in names:
                raise ValueError(f"virtual model {v.name!r}: aggregator {agg!r} is not an expert")
        if sum(e.generalist for e in self.experts) > 1:
            raise ValueError("at most one expert may be the generalist")
        ports = [e.launch.port for e in self.experts if e.launch]
        if len(set(ports)) != len(ports):
            raise ValueError("launched experts need distinct ports")
        return self

    @property
    def generalist(self) -> ExpertSpec:
        """The fallback expert: the one marked ``generalist``, else the first."""
        return next((e for e in self.experts if e.generalist), self.experts[0])

    def expert(self, name: str) -> ExpertSpec | None:
        """The expert called ``name``, if any."""
        return next((e for e in self.experts if e.name == name), None)

    def virtual_model(self, name: str) -> VirtualModelSpec | None:
        """The virtual model called ``name``, if any."""
        return next((v for v in self.virtual_models if v.name == name), None)

    def experts_for(self, category: str) -> list[ExpertSpec]:
        """Experts that declare ``category``, cheapest first."""
        return sorted((e for e in self.experts if category in e.categories), key=lambda e: e.cost)


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog at ``path``; every problem names the file and field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"catalog {path}: file not found (set COE_CATALOG)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"catalog {path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"catalog {path}: not UTF-8 text: {exc}") from None
    except OSError as exc:  # a directory, no permission, ...: still name the file
        raise ConfigError(f"catalog {path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"catalog {path}: the top level must be a mapping with 'experts'")
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_field_path(err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"catalog {path}: {problems}") from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
