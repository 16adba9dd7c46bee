"""Static checks of the deployment files against the code: compose.yaml, .env.example, the
Dockerfile, deploy/kubernetes (kustomize base and overlays, KEDA), deploy/grafana and
deploy/prometheus.

No Docker engine or cluster is needed: the files are parsed and compared with what the code
defines (Settings fields, `rivulet` subcommands, HTTP paths, stream and group names, metric
names). When `kubectl` is on PATH, the kustomizations are also rendered with `kubectl kustomize`.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from functools import cache
from pathlib import Path
from typing import Any, Final, cast

import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import ConnectionError as RedisConnectionError

from rivulet_cli.main import build_parser
from services.gateway.app import Gateway, GatewayMetrics
from shared.config import Settings, load_settings
from shared.metrics import MetricsApp, WorkerMetrics
from shared.profile_streams import PROFILER_GROUP
from shared.schemas import ALL_KINDS, KINDS, PROFILES
from shared.streams import Keys

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
KUBE: Final = DEPLOY / "kubernetes"
BASE: Final = KUBE / "base"
OVERLAYS: Final = sorted(p for p in (KUBE / "overlays").iterdir() if p.is_dir())
CONTRACT: Final = ROOT.parent / "shared" / "CONTRACT.md"

IMAGE: Final = "rivulet"  # the image the Dockerfile builds (compose tags it rivulet:latest)
WORKERS: Final = ("normalizer", "writer", "profiler")
SERVICES: Final = ("gateway", *WORKERS)
FIELDS: Final = frozenset(Settings.__struct_fields__)
RIVULET_VAR: Final = re.compile(r"\bRIVULET_[A-Z0-9_]+\b")
METRIC_NAME: Final = re.compile(r"\brivulet_[a-z0-9_]+\b")

Json = dict[str, Any]


# --- loading ------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_one(path: Path) -> Any:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document"
    return docs[0]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (docker compose env_file and kustomize `envs` share this subset)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}:{number}: not KEY=VALUE: {line!r}"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key), f"{path}:{number}: bad key {key!r}"
        values[key] = value
    return values


@cache
def compose() -> Json:
    return cast(Json, load_one(ROOT / "compose.yaml"))


def kustomization(folder: Path) -> Json:
    return cast(Json, load_one(folder / "kustomization.yaml"))


def generator_files(entry: Json) -> list[str]:
    files = list(entry.get("envs", []))
    for item in entry.get("files", []):
        files.append(str(item).partition("=")[2] or str(item))
    return files


def referenced_files(folder: Path) -> Iterator[Path]:
    """Every file a kustomization names: resources, patches, generator inputs, configurations."""
    k = kustomization(folder)
    for resource in k.get("resources", []):
        yield folder / resource
    for patch in k.get("patches", []):
        if "path" in patch:
            yield folder / patch["path"]
    for patch in k.get("patchesStrategicMerge", []):
        yield folder / patch
    for entry in (*k.get("configMapGenerator", []), *k.get("secretGenerator", [])):
        for name in generator_files(entry):
            yield folder / name
    for name in (*k.get("configurations", []), *k.get("components", [])):
        yield folder / name


def manifests(folder: Path) -> list[Json]:
    """The resources of a kustomization, recursively (patches excluded)."""
    docs: list[Json] = []
    for resource in kustomization(folder).get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            docs.extend(manifests(path))
        else:
            docs.extend(cast(list[Json], load_docs(path)))
    return docs


@cache
def base_docs() -> list[Json]:
    return manifests(BASE)


def of_kind(kind: str, docs: list[Json] | None = None) -> dict[str, Json]:
    return {d["metadata"]["name"]: d for d in (docs or base_docs()) if d["kind"] == kind}


def generated_env(folder: Path, generator: str, name: str) -> dict[str, str]:
    """The data of a configMapGenerator/secretGenerator entry (envs files and literals)."""
    for entry in kustomization(folder).get(generator, []):
        if entry["name"] == name:
            data: dict[str, str] = {}
            for env in entry.get("envs", []):
                data.update(read_env_file(folder / env))
            for literal in entry.get("literals", []):
                key, _, value = str(literal).partition("=")
                data[key] = value
            return data
    raise AssertionError(f"{folder}: no {generator} named {name}")


@cache
def config_map() -> dict[str, str]:
    return generated_env(BASE, "configMapGenerator", "rivulet-config")


@cache
def secret() -> dict[str, str]:
    return generated_env(BASE, "secretGenerator", "rivulet-secrets")


def deployment(service: str) -> Json:
    return of_kind("Deployment")[f"rivulet-{service}"]


def container(service: str) -> Json:
    containers = deployment(service)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"rivulet-{service}: one container expected"
    return cast(Json, containers[0])


def container_env(service: str) -> dict[str, str]:
    """What the container sees: ConfigMap and Secret (envFrom), then its own `env`."""
    c = container(service)
    sources = {
        ref.get("configMapRef", ref.get("secretRef", {})).get("name") for ref in c["envFrom"]
    }
    assert sources == {"rivulet-config", "rivulet-secrets"}, f"{service}: envFrom {sources}"
    env = {**config_map(), **secret()}
    env.update({e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e})
    return env


def named_port(c: Json, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"{c['name']}: no port named {port!r}")


def compose_env_files() -> list[Path]:
    paths: list[Path] = []
    for entry in compose()["x-rivulet"]["env_file"]:
        if isinstance(entry, str):
            paths.append(ROOT / entry)
        elif entry.get("required", True) or (ROOT / entry["path"]).exists():
            paths.append(ROOT / entry["path"])
    return paths


def compose_env(service: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for path in compose_env_files():
        env.update(read_env_file(path))
    declared = compose()["services"][service].get("environment", {})
    if isinstance(declared, list):
        declared = dict(str(item).partition("=")[::2] for item in declared)
    env.update({k: str(v) for k, v in declared.items()})
    return env


# --- everything parses, kustomizations are complete ---------------------------------------------


def yaml_files() -> list[Path]:
    return sorted([ROOT / "compose.yaml", *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path}: empty"
    if KUBE in path.parents and path.name not in ("kustomization.yaml", "kustomizeconfig.yaml"):
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not a resource"
            assert doc["metadata"].get("name"), f"{path}: a {doc['kind']} without a name"


def test_grafana_dashboards_parse() -> None:
    dashboards = sorted((DEPLOY / "grafana").glob("*.json"))
    assert dashboards
    for path in dashboards:
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def kustomize_folders() -> list[Path]:
    return sorted(p.parent for p in KUBE.rglob("kustomization.yaml"))


@pytest.mark.parametrize("folder", kustomize_folders(), ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomization_references_exist(folder: Path) -> None:
    for path in referenced_files(folder):
        assert path.exists(), f"{folder}/kustomization.yaml names a missing {path}"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{path}: no kustomization.yaml"


def test_every_kubernetes_file_is_used() -> None:
    used = {p.resolve() for folder in kustomize_folders() for p in referenced_files(folder)}
    for path in KUBE.rglob("*"):
        if path.is_file() and path.name != "kustomization.yaml":
            assert path.resolve() in used, f"{path} is in no kustomization"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomize_renders(folder: Path) -> None:
    run = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    # generated names carry a hash suffix: every reference must follow it
    for d in docs:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                for ref in c["envFrom"]:
                    kind = "ConfigMap" if "configMapRef" in ref else "Secret"
                    name = (ref.get("configMapRef") or ref["secretRef"])["name"]
                    assert (kind, name) in names, f"{d['metadata']['name']}: no {kind} {name}"
                assert c["image"].split(":")[0].rsplit("/", 1)[-1] == IMAGE
        if d["kind"] == "TriggerAuthentication":
            for ref in d["spec"]["secretTargetRef"]:
                assert ("Secret", ref["name"]) in names, f"TriggerAuthentication: {ref['name']}"
        if d["kind"] == "ScaledObject":
            target = d["spec"]["scaleTargetRef"]["name"]
            assert ("Deployment", target) in names, f"ScaledObject: {target}"


# --- settings: every RIVULET_* variable is a Settings field -------------------------------------


def set_variables() -> dict[str, set[str]]:
    """RIVULET_* names set anywhere in the deployment files -> where."""
    found: dict[str, set[str]] = {}

    def add(names: Iterator[str] | list[str] | set[str], where: str) -> None:
        for name in names:
            if name.startswith("RIVULET_") and not name.startswith("RIVULET_TEST_"):
                found.setdefault(name, set()).add(where)

    add(list(read_env_file(ROOT / ".env.example")), ".env.example")
    for name, service in compose()["services"].items():
        env = service.get("environment", {})
        keys = [str(i).partition("=")[0] for i in env] if isinstance(env, list) else list(env)
        add(keys, f"compose.yaml {name}")
    for folder in kustomize_folders():
        k = kustomization(folder)
        for generator in ("configMapGenerator", "secretGenerator"):
            for entry in k.get(generator, []):
                add(list(generated_env(folder, generator, entry["name"])), str(folder))
    for path in KUBE.rglob("*.yaml"):
        for doc in load_docs(path):
            if not isinstance(doc, dict) or doc.get("kind") not in ("Deployment", "ConfigMap"):
                continue
            if doc["kind"] == "ConfigMap":
                add(list(doc.get("data", {})), str(path))
                continue
            for c in doc["spec"]["template"]["spec"].get("containers", []):
                add([e["name"] for e in c.get("env", [])], str(path))
    return found


def test_rivulet_variables_are_settings_fields() -> None:
    found = set_variables()
    unknown = {
        name: sorted(where)
        for name, where in found.items()
        if name.removeprefix("RIVULET_").lower() not in FIELDS
    }
    if set(unknown) == {"RIVULET_METRICS_PORT"} and "metrics_port" not in FIELDS:
        pytest.skip("RIVULET_METRICS_PORT waits for Settings.metrics_port (workers' /metrics)")
    assert not unknown, f"not Settings fields: {unknown}"


def test_deployment_settings_load() -> None:
    """The values themselves convert: what each container and compose service would load."""
    for service in SERVICES:
        load_settings(environ=container_env(service))
        load_settings(environ=compose_env(service))


def contract_variables() -> list[str]:
    if not CONTRACT.exists():
        pytest.skip(f"{CONTRACT} not found (shared/ is beside the repository in CI)")
    text = CONTRACT.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\|\s*(RIVULET_[A-Z0-9_]+)\s*\|", section, re.MULTILINE)
    assert names, "no variables in CONTRACT.md's Configuration table"
    return names


def test_contract_variables_are_in_configmap_or_secret() -> None:
    for name in contract_variables():
        assert name in config_map() or name in secret(), f"{name} is in neither"
        assert name in read_env_file(ROOT / ".env.example"), f"{name} missing in .env.example"


def test_secret_holds_the_urls_and_configmap_does_not() -> None:
    urls = {"RIVULET_REDIS_URL", "RIVULET_CLICKHOUSE_URL", "RIVULET_TIMESCALE_DSN"}
    assert urls <= set(secret())
    assert not urls & set(config_map())
    for folder in OVERLAYS:
        for entry in kustomization(folder).get("configMapGenerator", []):
            assert not urls & set(generated_env(folder, "configMapGenerator", entry["name"]))


def test_clickhouse_is_a_server_everywhere() -> None:
    """chdb:/// is one process per data directory: replicated writers need a server."""
    urls = [secret()["RIVULET_CLICKHOUSE_URL"], compose_env("writer")["RIVULET_CLICKHOUSE_URL"]]
    for folder in OVERLAYS:
        for entry in kustomization(folder).get("secretGenerator", []):
            data = generated_env(folder, "secretGenerator", entry["name"])
            if "RIVULET_CLICKHOUSE_URL" in data:
                urls.append(data["RIVULET_CLICKHOUSE_URL"])
    for url in urls:
        settings = load_settings(environ={"RIVULET_CLICKHOUSE_URL": url})
        assert url.startswith(("http://", "https://")) and not settings.uses_chdb, url


# --- images and commands ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_multistage_non_root_rivulet_entrypoint() -> None:
    steps = dockerfile_instructions()
    assert sum(1 for op, _ in steps if op == "FROM") >= 2, "multi-stage build expected"
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime stage runs as root"
    entry = [json.loads(arg) for op, arg in final if op == "ENTRYPOINT"]
    assert entry == [["rivulet"]], 'exec-form ENTRYPOINT ["rivulet"] expected'
    cmd = [json.loads(arg) for op, arg in final if op == "CMD"]
    assert cmd, "a default CMD"
    build_parser().parse_args(cmd[-1])


def test_images_agree() -> None:
    services = compose()["services"]
    built = {name for name, s in services.items() if "build" in s}
    assert built >= set(SERVICES), f"compose builds {built}"
    for name in built:
        image = services[name]["image"]
        assert image.split(":")[0] == IMAGE, f"compose {name}: image {image}"
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
    for service in SERVICES:
        image = container(service)["image"]
        assert image.split(":")[0] == IMAGE, f"rivulet-{service}: image {image}"
    for folder in OVERLAYS:
        for entry in kustomization(folder).get("images", []):
            assert entry["name"] == IMAGE, f"{folder}: images entry for {entry['name']}"


def parse_rivulet(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on unknown commands/options
        raise AssertionError(f"not a rivulet command: {argv}") from exc


def test_commands_are_rivulet_subcommands() -> None:
    for service in SERVICES:
        c = container(service)
        assert c.get("command", ["rivulet"]) == ["rivulet"], f"{service}: command {c['command']}"
        assert parse_rivulet(c["args"]).command == service
        compose_command = compose()["services"][service]["command"]
        assert parse_rivulet(compose_command).command == service


# --- ports, probes, scraping --------------------------------------------------------------------

Scope = MutableMapping[str, Any]


async def asgi_get(app: Callable[..., Awaitable[None]], path: str) -> int:
    """Status of a GET through an ASGI app, in-process."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


class PingingRedis:
    """Stands in for the worker's Redis client: only `ping` is used by /readyz."""

    def __init__(self, up: bool) -> None:
        self.up = up

    async def ping(self) -> bool:
        if not self.up:
            raise RedisConnectionError("down")
        return True


async def test_gateway_port_and_probe_paths_exist() -> None:
    c = container("gateway")
    port = int(container_env("gateway")["RIVULET_HTTP_PORT"])
    assert port == Settings().http_port == 8080
    assert named_port(c, "http") == port
    assert container_env("gateway")["RIVULET_HTTP_HOST"] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert named_port(c, c[probe]["httpGet"]["port"]) == port
    annotations = deployment("gateway")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    service = of_kind("Service")["rivulet-gateway"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    # compose: the published port and the healthcheck's URL
    gateway = compose()["services"]["gateway"]
    assert gateway["ports"] == [f"{port}:{port}"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert compose_env("gateway")["RIVULET_HTTP_PORT"] == str(port)

    # the paths exist in the code: the gateway answers them (503 from /readyz: no Redis here)
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        app = Gateway(Settings(), client)
        assert await asgi_get(app, "/healthz") == 200
        assert await asgi_get(app, "/metrics") == 200
        assert await asgi_get(app, "/readyz") in (200, 503)
        assert await asgi_get(app, "/no-such-path") == 404
    finally:
        await client.aclose()


@pytest.mark.parametrize("service", WORKERS)
async def test_worker_metrics_port_and_probe_paths_exist(service: str) -> None:
    c = container(service)
    env = container_env(service)
    port = int(env["RIVULET_METRICS_PORT"])
    assert port == 9464
    assert named_port(c, "metrics") == port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert named_port(c, c[probe]["httpGet"]["port"]) == port
    annotations = deployment(service)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    # compose: same port, healthcheck on /healthz
    assert compose_env(service)["RIVULET_METRICS_PORT"] == str(port)
    test = " ".join(compose()["services"][service]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in test

    # the paths exist in the code (shared.metrics.MetricsApp)
    metrics = WorkerMetrics(service)
    up = MetricsApp(metrics, cast(aioredis.Redis, PingingRedis(up=True)))
    down = MetricsApp(metrics, cast(aioredis.Redis, PingingRedis(up=False)))
    assert await asgi_get(up, "/healthz") == 200
    assert await asgi_get(up, "/metrics") == 200
    assert await asgi_get(up, "/readyz") == 200
    assert await asgi_get(down, "/readyz") == 503
    assert await asgi_get(down, "/healthz") == 200
    assert await asgi_get(up, "/no-such-path") == 404


def test_profiler_reports_port() -> None:
    env = container_env("profiler")
    port = int(env["RIVULET_PROFILER_HTTP_PORT"])
    assert port == Settings().profiler_http_port
    assert env["RIVULET_PROFILER_HTTP_HOST"] == "0.0.0.0"
    assert named_port(container("profiler"), "reports") == port
    service = of_kind("Service")["rivulet-profiler"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["reports"]


def test_pods_are_hardened_and_bounded() -> None:
    pdbs = of_kind("PodDisruptionBudget")
    for service in SERVICES:
        d = deployment(service)
        pod = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # Service links would inject <SERVICE>_PORT=tcp://... variables, e.g. RIVULET_HTTP_PORT
        # for a Service named rivulet-http: never let them reach Settings.
        assert pod["enableServiceLinks"] is False, service
        assert pod["securityContext"]["runAsNonRoot"] is True, service
        c = container(service)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, service
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, service
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], service
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), service
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), service
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), service
        covering = [
            p
            for p in pdbs.values()
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, f"{service}: {len(covering)} PodDisruptionBudgets"
        assert "preStop" not in c.get("lifecycle", {}), "SIGTERM is enough (see comments)"
    for name, service in compose()["services"].items():
        assert service.get("deploy", {}).get("resources", {}).get("limits"), f"compose {name}"
        assert "healthcheck" in service, f"compose {name}: no healthcheck"


def test_compose_shape() -> None:
    services = compose()["services"]
    assert {"redis", "clickhouse", "timescaledb", *SERVICES} <= set(services)
    redis_command = services["redis"]["command"]
    for flag in ("--appendonly yes", "--maxmemory ", "--maxmemory-policy noeviction"):
        assert flag in redis_command, f"redis: {flag}"
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb")
    assert services["normalizer"]["deploy"]["replicas"] == 2
    assert services["writer"]["deploy"]["replicas"] == 2
    for name in SERVICES:
        for dependency, condition in services[name]["depends_on"].items():
            assert dependency in services
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    assert set(services["writer"]["depends_on"]) == {"redis", "clickhouse", "timescaledb"}


# --- KEDA: triggers name the streams and groups the code uses -----------------------------------


def consumed(service: str, namespace: str) -> tuple[set[str], str]:
    """(streams, group) that `rivulet <service>` with the Deployment's arguments reads."""
    args = parse_rivulet(container(service)["args"])
    keys = Keys(namespace)
    if service == "normalizer":
        assert set(args.kinds) <= set(KINDS)
        return {keys.stream(k, "raw") for k in args.kinds}, keys.group("normalizer")
    if service == "writer":
        assert set(args.kinds) <= set(ALL_KINDS)
        return {keys.stream(k, "clean") for k in args.kinds}, keys.group("writer")
    assert service == "profiler"
    return {keys.stream(PROFILES, "raw")}, PROFILER_GROUP


def test_keda_triggers_match_streams_and_groups() -> None:
    namespace = config_map().get("RIVULET_NAMESPACE", Settings().namespace)
    scaled = of_kind("ScaledObject")
    auths = of_kind("TriggerAuthentication")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == {
        f"rivulet-{w}" for w in WORKERS
    }
    for so in scaled.values():
        service = so["spec"]["scaleTargetRef"]["name"].removeprefix("rivulet-")
        streams, group = consumed(service, namespace)
        assert "replicas" not in deployment(service)["spec"], f"{service}: KEDA owns replicas"
        seen: set[str] = set()
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "redis-streams"
            meta = trigger["metadata"]
            assert meta["consumerGroup"] == group, f"{service}: {meta['consumerGroup']}"
            assert meta["stream"] in streams, f"{service}: {meta['stream']} is not read"
            assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata are strings"
            assert int(meta["lagCount"]) > int(meta["activationLagCount"]) >= 0
            redis_db = load_settings(environ=secret()).redis_url.rsplit("/", 1)[-1] or "0"
            assert meta.get("databaseIndex", "0") == redis_db
            assert trigger["authenticationRef"]["name"] in auths
            seen.add(meta["stream"])
        assert seen == streams, f"{service}: no trigger for {sorted(streams - seen)}"
        low, high = so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]
        assert 1 <= low <= high
    for auth in auths.values():
        for ref in auth["spec"]["secretTargetRef"]:
            data = generated_env(BASE, "secretGenerator", ref["name"])
            assert ref["key"] in data, f"{ref['name']} has no {ref['key']}"
            if ref["parameter"] == "address":  # KEDA wants host:port, not a URL
                assert re.fullmatch(r"[A-Za-z0-9.-]+:\d+", data[ref["key"]]), data[ref["key"]]


# --- metrics: dashboards and alerts only use names the code defines -----------------------------


@cache
def exposed_metric_names() -> frozenset[str]:
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for registry in (GatewayMetrics().registry, WorkerMetrics("x").registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return frozenset(names)


def dashboard_queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def alert_rules() -> list[Json]:
    rules: list[Json] = []
    for path in sorted((DEPLOY / "prometheus").glob("*.y*ml")):
        for doc in load_docs(path):
            for group in doc["groups"]:
                rules.extend(group["rules"])
    return rules


def all_queries() -> list[tuple[str, str]]:
    queries: list[tuple[str, str]] = []
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        queries.extend((path.name, q) for q in dashboard_queries(dashboard))
    queries.extend(("alerts", str(rule["expr"])) for rule in alert_rules())
    return queries


def test_metric_names_exist_in_the_code() -> None:
    defined = exposed_metric_names()
    assert "rivulet_gateway_requests_total" in defined
    assert "rivulet_stream_lag" in defined
    used: set[str] = set()
    for where, query in all_queries():
        for name in METRIC_NAME.findall(query):
            assert name in defined, f"{where}: {name} is not a metric the code defines"
            used.add(name)
    # every family appears somewhere (histograms through their _bucket/_sum/_count)
    families = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for n in used}
    for registry in (GatewayMetrics().registry, WorkerMetrics("x").registry):
        for family in registry.collect():
            assert family.name in families or family.name + "_total" in used, family.name


def test_shared_stream_gauges_are_not_summed() -> None:
    """Every replica reports the same stream gauges: max, never sum."""
    summed = re.compile(
        r"\b(sum|avg)\s*(?:(?:by|without)\s*\([^()]*\))?\s*\(\s*rivulet_(stream|dlq)_"
    )
    for where, query in all_queries():
        assert not summed.search(query), f"{where}: {query}"


def test_dashboard_shape() -> None:
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["schemaVersion"] >= 36
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), "panel ids repeat"
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                assert METRIC_NAME.search(target["expr"]), panel["title"]


def test_alert_rules_shape() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert METRIC_NAME.search(str(rule["expr"])), rule["alert"]
    exprs = " ".join(str(r["expr"]) for r in rules)
    for needed in (
        "rivulet_stream_lag",
        "rivulet_dlq_length",
        "rivulet_stream_consumers",
        "rivulet_stream_headroom_seconds",
        "rivulet_gateway_requests_total",
    ):
        assert needed in exprs, f"no alert on {needed}"


# --- the image ----------------------------------------------------------------------------------


def test_services_import_without_chdb() -> None:
    """The Dockerfile leaves chdb (and its pandas/pyarrow) out of the image: the services must not
    import them unless the ClickHouse URL is chdb:///."""
    modules = [
        "rivulet_cli.main",
        "services.gateway.main",
        "services.gateway.app",
        "services.gateway.unsigned",
        "services.gateway.otlp",
        "services.normalizer.main",
        "services.writer.main",
        "services.profiler.main",
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'chdb', 'pandas', 'pyarrow'})\n"
        "print(','.join(heavy))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", f"imported at start: {run.stdout.strip()}"


def test_package_data_reaches_the_image() -> None:
    """Files the code reads next to its modules must be in the image: declared as package data in
    pyproject.toml or copied by the Dockerfile (the wheel carries only .py files otherwise)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = pyproject.get("tool", {}).get("setuptools", {}).get("package-data", {})
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    dev_only = {ROOT / "services" / "profiler" / "proto"}  # `make proto` input, not read at run
    for package in ("shared", "services", "rivulet_cli"):
        for path in (ROOT / package).rglob("*"):
            if (
                not path.is_file()
                or path.suffix in (".py", ".pyi", ".pyc", ".typed")
                or "__pycache__" in path.parts
                or any(d in path.parents for d in dev_only)
            ):
                continue
            folder = path.parent.relative_to(ROOT).as_posix()
            assert declared or folder in dockerfile, f"{path} would be missing from the image"


def test_docs_describe_the_deploy_files() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for needed in (
        "XINFO GROUPS",
        "XPENDING",
        "XGROUP DELCONSUMER",
        "rivulet dlq replay",
        "RIVULET_KEY_CACHE_TTL_S",
        "FINAL",
        "ADD COLUMN IF NOT EXISTS",
        "deploy/kubernetes",
    ):
        assert needed in operations, needed
    # every alert has a line in the runbook
    for rule in alert_rules():
        assert rule["alert"].removesuffix("Growing") in operations, rule["alert"]


def test_parametrizations_are_not_empty() -> None:
    assert yaml_files() and kustomize_folders() and OVERLAYS
