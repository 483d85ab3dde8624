"""``coe-router``: serve the gateway, prepare local models, check a catalog."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from coe_router.config import Settings
from coe_router.errors import CoEError, ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coe-router",
        description="One OpenAI-compatible endpoint in front of many expert LLMs.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (and the catalog's local experts)")
    serve.add_argument("--catalog", type=Path, help="expert catalog YAML (COE_CATALOG)")
    serve.add_argument("--host", help="listen address (COE_SERVER__HOST)")
    serve.add_argument("--port", type=int, help="listen port (COE_SERVER__PORT)")
    serve.add_argument("--models-dir", type=Path, help="prepared models (COE_LOCAL__MODELS_DIR)")
    serve.add_argument(
        "--no-launch", action="store_true", help="do not start the catalog's local experts"
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")

    models = sub.add_parser("models", help="local models for machines without a GPU")
    msub = models.add_subparsers(dest="models_command", required=True)
    prep = msub.add_parser("prepare", help="turn packaged GGUF models into vLLM checkpoints")
    prep.add_argument("names", nargs="*", help="models to prepare (default: all)")
    prep.add_argument("--models-dir", type=Path, help="where checkpoints go")
    prep.add_argument("--force", action="store_true", help="prepare again even if present")
    msub.add_parser("list", help="list the models that can be prepared")

    cat = sub.add_parser("catalog", help="catalog tools")
    csub = cat.add_subparsers(dest="catalog_command", required=True)
    check = csub.add_parser("check", help="validate a catalog file")
    check.add_argument("path", type=Path, nargs="?", help="catalog YAML (default: COE_CATALOG)")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    server: dict[str, object] = {}
    local: dict[str, object] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if getattr(args, "models_dir", None):
        local["models_dir"] = args.models_dir
    if getattr(args, "no_launch", False):
        local["launch"] = False
    update: dict[str, object] = {
        "server": settings.server.model_copy(update=server),
        "local": settings.local.model_copy(update=local),
    }
    if getattr(args, "catalog", None):
        update["catalog"] = args.catalog
    return settings.model_copy(update=update)


def _serve(args: argparse.Namespace) -> int:
    from coe_router import tracing
    from coe_router.gateway import create_app
    from coe_router.gateway.server import GatewayServer, gateway_config

    settings = _settings(args)
    app = create_app(settings)
    s = settings.server
    config = gateway_config(
        app, host=s.host, port=s.port, log_level=s.log_level, access_log=args.access_log,
        header_timeout_s=s.header_timeout_s, drain_s=s.drain_s,
    )  # fmt: skip
    # The OTEL_* variables decide; off (and opentelemetry never imported) unless they ask.
    tracer = tracing.configure()
    try:
        GatewayServer(config, app.state.drain).run()
    finally:
        tracer.shutdown()  # export what is still batched
    return 0


def _models(args: argparse.Namespace) -> int:
    from coe_router.modelprep.prepare import KNOWN_MODELS, prepare_models

    if args.models_command == "list":
        for name, source in KNOWN_MODELS.items():
            print(f"{name:32} {source.description}")
        return 0
    settings = _settings(args)
    unknown = sorted(set(args.names) - set(KNOWN_MODELS))
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; known: {sorted(KNOWN_MODELS)}")
    done = prepare_models(args.names or None, settings.local.models_dir, force=args.force)
    for name, path in done.items():
        print(f"{name}: {path}")
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from coe_router.catalog import load_catalog
    from coe_router.routing.table import RoutingTable

    path = args.path or Settings().catalog
    catalog = load_catalog(path)
    RoutingTable(catalog)  # builds every router, so router options are checked too
    print(
        f"{path}: ok ({len(catalog.experts)} experts, {len(catalog.virtual_models)} virtual models)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coe-router`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO, health checks included: far too chatty.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handlers = {"serve": _serve, "models": _models, "catalog": _catalog}
    try:
        return handlers[args.command](args)
    except CoEError as exc:  # ConfigError, ModelPrepareError: a message, not a traceback
        print(f"coe-router: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
