"""The deployment files: docker-compose.yml, its catalogs, prometheus.yml and the Dockerfile.

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

from coe_router.experts.catalog import Catalog, load_catalog
from coe_router.routing.table import RoutingTable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ADMIN_KEY = "test-admin-key"

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
_COMPOSE_VARS = re.compile(r"^(COE_|COMPOSE_|HF_TOKEN$|VLLM_IMAGE_TAG$|PROMETHEUS_PORT$)")

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
    proc = run_compose(tmp_path, *args, "config", env={"COE_ADMIN_KEY": ADMIN_KEY, **env})
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


def catalog(name: str) -> Catalog:
    cat = load_catalog(ROOT / "deploy" / name)
    RoutingTable(cat)  # builds the routers too, as `coe-router catalog check` does
    return cat


# --------------------------------------------------------------------------- compose


def test_compose_config_parses_with_the_default_services(config: dict[str, Any]) -> None:
    for name in ("gateway", "redis", "prometheus", "model-download", *GPU_EXPERTS):
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


def test_admin_key_is_required(tmp_path: Path) -> None:
    proc = run_compose(tmp_path, "config")
    assert proc.returncode != 0, "docker-compose config passed without COE_ADMIN_KEY"
    assert "COE_ADMIN_KEY" in proc.stderr + proc.stdout


def test_admin_key_reaches_the_gateways(cpu_config: dict[str, Any]) -> None:
    for name in GATEWAYS:
        env = env_of(service(cpu_config, name))
        assert env.get("COE_AUTH__ADMIN_KEY") == ADMIN_KEY
        assert "HF_TOKEN" not in env


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
