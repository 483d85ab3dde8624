"""``python -m router_training``: fit, evaluate, calibrate, profile, build-default,
distill-encoder, export-data, replay, compare, real-prompts, tune.

Every subcommand has ``--help``; long work shows progress bars on stderr; problems
(bad data lines, missing files, a bad catalog) end with one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coe_router.errors import ConfigError
from coe_router.routing.encoder import DEFAULT_ENCODER, STATIC_ENCODER, Encoder
from router_training import (
    compare,
    embed,
    export,
    finetune,
    fit_command,
    realprompts,
    replay,
    tune,
)
from router_training.data import DataError, Example, add_data_arguments, read_files

DEFAULT_CACHE = Path(".cache/router_data")
DEFAULT_OUT = Path("deploy/routers/default")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _read(paths: Sequence[Path], skip_bad: bool) -> list[Example]:
    return read_files(paths, skip_bad=skip_bad, log=_log)


def _catalog(path: Path | None) -> Any:
    from coe_router.catalog import load_catalog
    from coe_router.config import Settings

    return load_catalog(path or Settings().catalog)


# --- subcommands -------------------------------------------------------------------------------


def _router(a: argparse.Namespace, catalog: Any, cost_weight: float | None = None) -> Any:
    from coe_router.routing.base import ROUTER_CLS, build_router

    if a.router is None:
        spec = catalog.virtual_model(a.model)
        if spec is None:
            raise ConfigError(f"the catalog has no virtual model {a.model!r}")
        if cost_weight is not None:
            spec = spec.model_copy(update={"options": {**spec.options, "cost_weight": cost_weight}})
        else:
            _log(f"evaluating the gateway's router for {a.model!r}: {spec.router} {spec.options}")
        return build_router(spec, catalog)
    options: dict[str, Any] = {"artifact": str(a.router)}
    if a.profiles:
        options["profiles"] = str(a.profiles)
    if a.threshold is not None:
        options["threshold"] = a.threshold
    weight = cost_weight if cost_weight is not None else a.cost_weight
    if weight is not None:
        options["cost_weight"] = weight
    return ROUTER_CLS[a.strategy](catalog, options)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from coe_router.routing.artifact import ExpertProfiles
    from router_training.evaluate import dominating, evaluate, print_report
    from router_training.taxonomy import CATEGORIES

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    examples = _read(a.data, a.skip_bad)
    if a.limit:
        examples = examples[: a.limit]
    catalog = _catalog(a.catalog)
    router = _router(a, catalog)
    profiles = ExpertProfiles.load(a.profiles) if a.profiles else None
    report = evaluate(
        router,
        examples,
        labels=CATEGORIES,
        catalog=catalog,
        profiles=profiles,
        progress=not a.quiet,
    )
    table = report.get("quality_vs_cost")
    if table and a.cost_weights:
        # The same router with other cost weights: the routed points of the trade-off.
        for weight in (float(w) for w in a.cost_weights.split(",")):
            other = evaluate(
                _router(a, catalog, weight),
                examples,
                labels=CATEGORIES,
                catalog=catalog,
                profiles=profiles,
                progress=False,
            )["quality_vs_cost"][0]
            other["system"] = f"routed w={weight:g}"
            table.insert(-1, other)
    if table:
        report["dominated_by"] = dominating(table)
    if a.out:
        from router_training.plots import confusion_png, quality_cost_png

        report["confusion_png"] = str(
            confusion_png(report["confusion"], report["labels"], a.out / "confusion.png")
        )
        if report.get("quality_vs_cost"):
            report["quality_cost_png"] = str(
                quality_cost_png(report["quality_vs_cost"], a.out / "quality_cost.png")
            )
        (a.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    if a.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from coe_router.routing.artifact import RouterArtifact
    from coe_router.routing.category import category_expert_map
    from router_training.calibrate import assign, fallback_threshold, fit_shares, shares

    artifact = RouterArtifact.load(a.router)
    examples = _read(a.data, a.skip_bad)
    encoder, _ = embed.load_encoder(
        str(artifact.encoder["spec"]), str(artifact.encoder["long_text"])
    )
    x = embed.embed_all(artifact.feature_encoder(encoder), [e.prompt for e in examples])
    log_p = np.log(artifact.category_proba(x, biased=False) + 1e-12)
    catalog = _catalog(a.catalog)
    expert_of = category_expert_map(catalog, artifact.labels)
    generalist = catalog.generalist.name
    thresholds = dict(artifact.manifest.get("thresholds", {}))
    if a.fallback_share is not None:
        thresholds["fallback"] = fallback_threshold(np.exp(log_p).max(1), a.fallback_share)
    threshold = float(thresholds.get("fallback", 0.0))
    if a.shares:
        targets = {k: float(v) for k, v in (kv.split("=") for kv in a.shares.split(","))}
        bias, got = fit_shares(log_p, artifact.labels, expert_of, generalist, targets, threshold)
        thresholds["category_bias"] = bias
    else:
        zero = np.zeros(len(artifact.labels), dtype=np.float32)
        got = shares(
            sorted(set(expert_of.values()) | {generalist}),
            assign(log_p, zero, artifact.labels, expert_of, generalist, threshold),
        )
    result = {"thresholds": thresholds, "shares": {k: round(v, 4) for k, v in got.items()}}
    print(json.dumps(result, indent=1))
    if a.write:
        artifact.manifest["thresholds"] = thresholds
        artifact.save(Path(a.router))
        _log(f"updated {a.router}/manifest.json")
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from router_training.profile import keep_other_experts, pilots, run_profiles, write_scores

    examples = _read(a.data, a.skip_bad)
    catalog = _catalog(a.catalog)
    experts = a.experts.split(",") if a.experts else None
    answers: list[dict[str, str]] = [{} for _ in examples]
    profiles, per_example = asyncio.run(
        run_profiles(
            catalog,
            examples,
            experts,
            max_tokens=a.max_tokens,
            concurrency=a.concurrency,
            responses=answers if a.responses else None,
        )
    )
    a.output.mkdir(parents=True, exist_ok=True)
    if a.keep:
        profiles, per_example = keep_other_experts(a.output, examples, profiles, per_example)
    if a.responses:
        with a.responses.open("w", encoding="utf-8") as out:
            for ex, got in zip(examples, answers, strict=True):
                out.write(json.dumps({"prompt": ex.prompt, "responses": got}) + "\n")
    (a.output / "profiles.json").write_text(json.dumps(profiles, indent=1) + "\n")
    write_scores(a.output / "scores.jsonl", examples, per_example)
    if a.artifact:
        from coe_router.routing.artifact import RouterArtifact

        art = RouterArtifact.load(a.artifact)
        encoder, _ = embed.load_encoder(str(art.encoder["spec"]), str(art.encoder["long_text"]))
        x = embed.embed_all(encoder, [e.prompt for e in examples])
        np.savez(a.output / "pilots.npz", **pilots(x, per_example))
    for name, p in profiles["experts"].items():
        cats = ", ".join(f"{c} {v['score']:.2f}" for c, v in p["categories"].items())
        print(f"{name:<12} p50 {p['latency_ms_p50']} ms  errors {p['errors']}  {cats}")
    _log(f"wrote {a.output}/profiles.json and scores.jsonl")
    return 0


def cmd_build_default(a: argparse.Namespace) -> int:
    from router_training.default import build_default, default_c, default_config

    started = time.monotonic()

    def factory() -> Encoder:
        enc, info = embed.load_encoder(a.encoder, "head_tail")
        spec.update(info)
        spec["cache_key"] = embed.cache_key(info)
        return enc

    spec: dict[str, Any] = {"spec": a.encoder, "long_text": "head_tail"}
    c = a.C if a.C is not None else default_c(a.encoder)
    build_default(a.output, a.cache, factory, spec, default_config(c), log=_log)
    _log(f"build-default took {time.monotonic() - started:.0f} s")
    return 0


def cmd_distill_encoder(a: argparse.Namespace) -> int:
    from router_training.distill import distill

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    distill(a.source, a.output, dims=a.dims, sif=a.sif, log=_log)
    return 0


# --- parser ------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="python -m router_training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("evaluate", help="accuracy, per-category P/R/F1, confusion, latency")
    add_data_arguments(e)
    e.add_argument("--router", type=Path, help="artifact dir (default: the gateway's router)")
    e.add_argument("--strategy", choices=["category", "skill", "retriever"], default="category")
    e.add_argument("--catalog", type=Path, help="catalog YAML (default: COE_CATALOG)")
    e.add_argument("--model", default="coe", help="virtual model, without --router")
    e.add_argument("--profiles", type=Path, help="profiles.json for the quality/cost table")
    e.add_argument("--threshold", type=float, help="override the fallback threshold")
    e.add_argument("--cost-weight", type=float, help="with --router: quality per unit of cost")
    e.add_argument(
        "--cost-weights",
        help="comma-separated: also route with each cost weight (rows 'routed w=...')",
    )
    e.add_argument("--out", type=Path, help="directory for confusion.png and report.json")
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--json", action="store_true", help="last stdout line: the report as JSON")
    e.set_defaults(run=cmd_evaluate)

    c = sub.add_parser("calibrate", help="thresholds/offsets for target traffic shares")
    add_data_arguments(c)
    c.add_argument("--router", type=Path, required=True)
    c.add_argument("--catalog", type=Path)
    c.add_argument("--shares", help="expert=share,... e.g. code=0.3,general=0.7")
    c.add_argument("--fallback-share", type=float, help="share sent to the generalist")
    c.add_argument("--write", action="store_true", help="store the result in the manifest")
    c.set_defaults(run=cmd_calibrate)

    pr = sub.add_parser("profile", help="score each expert per category/skill (running experts)")
    add_data_arguments(pr)
    pr.add_argument("--catalog", type=Path)
    pr.add_argument("-o", "--output", type=Path, required=True)
    pr.add_argument("--experts", help="comma-separated subset")
    pr.add_argument("--artifact", type=Path, help="also write retriever pilots.npz")
    pr.add_argument("--max-tokens", type=int, default=512)
    pr.add_argument("--concurrency", type=int, default=4)
    pr.add_argument("--responses", type=Path, help="also write each answer here (JSONL)")
    pr.add_argument(
        "--keep",
        action="store_true",
        help="keep the other experts' results already in the output dir (re-profile some)",
    )
    pr.set_defaults(run=cmd_profile)

    b = sub.add_parser("build-default", help="the default router from public data")
    b.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    b.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    b.add_argument(
        "--encoder",
        default=STATIC_ENCODER,
        help=f"static encoder dir (default) or sentence-transformers model ({DEFAULT_ENCODER})",
    )
    b.add_argument(
        "--C",
        type=float,
        default=None,
        help="inverse regularization (default: 2.0 for a static encoder, 0.5 for MiniLM)",
    )
    b.set_defaults(run=cmd_build_default)

    d = sub.add_parser(
        "distill-encoder", help="a static (torch-free) encoder distilled from MiniLM"
    )
    d.add_argument("--source", default=DEFAULT_ENCODER, help="sentence-transformers model")
    d.add_argument("-o", "--output", type=Path, default=Path(STATIC_ENCODER))
    d.add_argument("--dims", type=int, default=384, help="PCA dimensions (384: MiniLM's own)")
    d.add_argument("--sif", type=float, default=1e-4, help="SIF coefficient")
    d.set_defaults(run=cmd_distill_encoder)

    # Commands that own their arguments, in their own modules.
    for name, help_, add_arguments, run in (
        ("fit", "labelled prompts -> router artifact", fit_command.add_arguments,
         fit_command.cmd_fit),
        ("export-data", "write a public source as labelled JSONL", export.add_arguments,
         export.cmd_export_data),
        ("replay", "the gateway's decision log -> evaluation JSONL", replay.add_arguments,
         replay.cmd_replay),
        ("compare", "every strategy of a catalog on one set, one table", compare.add_arguments,
         compare.cmd_compare),
        ("real-prompts", "read-labelled ShareGPT sets: counts, agreement",
         realprompts.add_arguments, realprompts.cmd_real_prompts),
        ("tune", "build-default's read weight and C, cross-validated on training turns",
         tune.add_arguments, tune.cmd_tune),
        ("fine-tune", "the cascade's second reader: MiniLM fine-tuned, int8 ONNX",
         finetune.add_arguments, finetune.cmd_fine_tune),
    ):  # fmt: skip
        command = sub.add_parser(name, help=help_)
        add_arguments(command)
        command.set_defaults(run=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (DataError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
