"""Every component of an install asked over its own protocol: the probes behind ``confmeet
status`` and the admin console's health page (GET /api/v1/admin/health).

The appliance through /healthz and /readyz, PostgreSQL, Redis, MongoDB and S3 through their
client libraries, Triton through its HTTP health and repository endpoints, coturn through a
STUN binding request, and the GPU through ``appliance.machine.gpu``. Only the settings file is
needed; when the install record and the Docker Engine are readable too, each container's own
state is added.
"""

from __future__ import annotations

import importlib
import json
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..settings import Settings, mask_url_password, triton_addresses

State = Literal["up", "degraded", "down", "n/a"]
TIMEOUT = 3.0


@dataclass
class Probe:
    """One component's answer: state, version, response time and a short detail."""

    state: State
    version: str = ""
    ms: float | None = None
    detail: str = ""
    component: str = ""
    serves: str = ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask_url_password(text[0]) if text else type(exc).__name__


def timed(work: Callable[[], Probe]) -> Probe:
    """Run a probe, filling its response time; an exception is the component being down."""
    start = time.perf_counter()
    try:
        probe = work()
    except Exception as exc:  # every failure of a client library means "does not answer"
        return Probe("down", detail=_first_line(exc), ms=None)
    if probe.ms is None and probe.state != "down":
        probe.ms = round((time.perf_counter() - start) * 1000, 1)
    return probe


def _sqlite(url: str, what: str) -> Probe:
    from appliance.stores.urls import local_path

    file = local_path(url)
    version = f"SQLite {sqlite3.sqlite_version}"
    if file.exists():
        return Probe("up", version, detail=f"embedded {what}: {file}")
    return Probe("up", version, detail=f"embedded {what}, created at the first start: {file}")


# ---------------------------------------------------------------------- one probe per protocol
def probe_database(url: str) -> Probe:
    if url.startswith("sqlite:"):
        return _sqlite(url, "database")
    import psycopg2

    from appliance.stores.urls import parse_postgres

    where = parse_postgres(url)
    conn = psycopg2.connect(dbname=where.database, user=where.user, password=where.password, host=where.host,
                            port=where.port, connect_timeout=int(TIMEOUT), **where.options)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0].split()[0]
            cur.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
            size = cur.fetchone()[0]
    finally:
        conn.close()
    return Probe("up", f"PostgreSQL {version}", detail=f"database {where.database}, {size}")


def probe_bus(url: str) -> Probe:
    if url.startswith("memory:"):
        return Probe("up", "in-process", detail="memory:// event bus (one appliance process)")
    import redis

    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        info = client.info("server")
        clients = client.info("clients").get("connected_clients", "?")
    finally:
        client.close()
    return Probe("up", f"Redis {info.get('redis_version', '?')}", detail=f"{clients} client(s) connected")


def probe_documents(url: str) -> Probe:
    if url.startswith("sqlite:"):
        return _sqlite(url, "documents")
    from pymongo import MongoClient

    client: Any = MongoClient(url, serverSelectionTimeoutMS=int(TIMEOUT * 1000),
                              connectTimeoutMS=int(TIMEOUT * 1000))
    try:
        client.admin.command("ping")
        version = client.admin.command("buildInfo").get("version", "?")
    finally:
        client.close()
    return Probe("up", f"MongoDB {version}", detail=f"database {urlsplit(url).path.lstrip('/') or 'test'}")


def probe_objects(url: str) -> Probe:
    from appliance.stores.urls import local_path, parse_s3

    if url.startswith("file:"):
        return Probe("up", "files", detail=f"embedded object store: {local_path(url)}")
    import urllib3
    from minio import Minio

    where = parse_s3(url)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=TIMEOUT, read=TIMEOUT),
                               retries=urllib3.Retry(total=0))
    client = Minio(where.host, access_key=where.access_key, secret_key=where.secret_key,
                   secure=where.secure, region=where.region, http_client=http)
    exists = client.bucket_exists(where.bucket)
    server = http.request("GET", f"{where.endpoint}/").headers.get("Server", "")
    http.clear()
    version = server or "S3"
    if not exists:
        return Probe("degraded", version,
                     detail=f"bucket {where.bucket!r} is missing (the appliance makes it at its start)")
    return Probe("up", version, detail=f"bucket {where.bucket}")


def _http_json(url: str, method: str = "GET", context: ssl.SSLContext | None = None, data: bytes | None = None,
               timeout: float = TIMEOUT) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, data=data if data is not None else
                                     (b"" if method == "POST" else None))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


CAPTION_MODELS = ("vad", "asr")  # the models the captions use (appliance.inference.models)


def _triton_base(url: str) -> str:
    parts = urlsplit(url)
    return f"http://{parts.hostname}:{parts.port or 8000}"


def _triton_models(base: str, timeout: float = TIMEOUT) -> dict[str, dict[str, Any]]:
    """Triton's repository index: model name → its entry (state, and reason when not READY)."""
    _, index = _http_json(f"{base}/v2/repository/index", "POST", timeout=timeout)
    return {m.get("name", "?"): m for m in index} if isinstance(index, list) else {}


def asr_device(base: str) -> str:
    """Where Triton's asr model runs, as the model itself reports it (its DEVICE output for an
    empty utterance, which costs nothing): e.g. "cuda:0 NVIDIA H100 80GB HBM3 float16"; "" when
    it does not say."""
    request = {"inputs": [{"name": "AUDIO", "shape": [0], "datatype": "FP32", "data": []},
                          {"name": "LANGUAGE", "shape": [1], "datatype": "BYTES", "data": [""]}],
               "outputs": [{"name": "DEVICE"}]}
    status, body = _http_json(f"{base}/v2/models/asr/infer", "POST", data=json.dumps(request).encode())
    if status != 200 or not isinstance(body, dict):
        return ""
    for output in body.get("outputs", []):
        if output.get("name") == "DEVICE" and output.get("data"):
            return str(output["data"][0])
    return ""


def describe_asr_device(device: str, why_not_gpu: str = "") -> str:
    """"asr on GPU <name> (...)" only when the model says it runs on CUDA; else where, and why."""
    if device.startswith("cuda"):
        words = device.split()
        name = " ".join(words[1:-1]) or words[0]
        return f"asr on GPU {name} ({words[0]}, {words[-1]})"
    if device:
        return f"asr on the CPU ({device})" + (f": {why_not_gpu}" if why_not_gpu else "")
    return "asr does not report its device"


def load_triton_models(url: str, names: tuple[str, ...], timeout: float) -> dict[str, str]:
    """Ask Triton (explicit model control) to load, or reload from the repository, each model;
    returns the ones that failed with Triton's reason."""
    base = _triton_base(url)
    failed = {}
    for name in names:
        status, body = _http_json(f"{base}/v2/repository/models/{name}/load", "POST", timeout=timeout)
        if status != 200:
            failed[name] = (body or {}).get("error", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
    return failed


def probe_inference(url: str, why_not_gpu: Callable[[], str] = lambda: "") -> Probe:
    if url.startswith("local:"):
        return Probe("up", "in-process", detail="local:// models in the appliance process")
    base = _triton_base(url)
    live, _ = _http_json(f"{base}/v2/health/live")
    ready, _ = _http_json(f"{base}/v2/health/ready")
    _, meta = _http_json(f"{base}/v2")
    models = _triton_models(base)
    version = f"Triton {meta.get('version', '?')}" if isinstance(meta, dict) else "Triton"
    if live != 200:
        return Probe("down", version, detail=f"/v2/health/live answered {live}")
    loaded = [name for name, m in models.items() if m.get("state") == "READY"]
    failed = {name: (m.get("reason") or m.get("state") or "not loaded") for name, m in models.items()
              if name in CAPTION_MODELS and m.get("state") != "READY"}
    parts = [f"{', '.join(loaded)} ready" if loaded else "no model ready"]
    if "asr" in loaded:
        device = asr_device(base)
        parts.append(describe_asr_device(device, why_not_gpu() if device and not device.startswith("cuda") else ""))
    for name, reason in failed.items():
        parts.append(f"{name} failed to load: {reason.strip().splitlines()[0][:300]}")
    missing = [name for name in CAPTION_MODELS if name not in models]
    if missing:
        parts.append(f"captions need {', '.join(missing)}: run confmeet models import")
    detail = "; ".join(parts)
    if ready != 200:
        return Probe("degraded", version, detail=f"not ready; {detail}")
    if failed or missing:
        return Probe("degraded", version, detail=detail)
    return Probe("up", version, detail=detail)


def probe_turn(server: str) -> Probe:
    """A STUN binding request to the TURN server's UDP port (coturn answers it without credentials)."""
    from appliance.machine.ports import stun_answers

    address = server.split(":", 1)[1].split("?")[0]
    host, colon, number = address.rpartition(":")
    if not colon or host.endswith(":"):  # no port (an IPv6 address alone is bracketed)
        host, number = address, "3478"
    host, port = host.strip("[]"), int(number)
    if stun_answers(host, port, timeout=TIMEOUT / 2):
        return Probe("up", "STUN/TURN", detail=f"{host}:{port}/udp answers")
    if host not in ("127.0.0.1", "localhost", "::1") and stun_answers("127.0.0.1", port, timeout=TIMEOUT / 2):
        return Probe("degraded", "STUN/TURN", detail=f"answers on 127.0.0.1:{port} but not at {host}: "
                                                      "check the DNS name and the firewall")
    return Probe("down", detail=f"no STUN answer from {host}:{port}/udp")


def probe_appliance(settings: Settings) -> Probe:
    from appliance.machine.ports import loopback_for

    tls = bool(settings.tls_cert)
    host = loopback_for(settings.host)
    base = f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{settings.port}"
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a health check on loopback; the doctor checks certificates
    status, health = _http_json(f"{base}/healthz", context=context)
    version = f"confmeet {health.get('version', '?')}" if isinstance(health, dict) else ""
    if status != 200:
        return Probe("down", version, detail=f"{base}/healthz answered {status}")
    ready, body = _http_json(f"{base}/readyz", context=context)
    if ready != 200:
        stores = body.get("stores", {}) if isinstance(body, dict) else {}
        failing = [name for name, item in stores.items() if not item.get("ok")]
        return Probe("degraded", version, detail=f"not ready: {', '.join(failing) or ready} (see /readyz)")
    return Probe("up", version, detail=f"{base} ready")


def _docker_info(docker_url: str | None) -> dict[str, Any] | None:
    if not docker_url:
        return None
    import docker

    try:
        client = docker.DockerClient(base_url=docker_url, timeout=3)
        try:
            return client.info()
        finally:
            client.close()
    except Exception:  # no engine, or no permission: the GPU report says what it lacks
        return None


def probe_gpu(docker_url: str | None) -> Probe:
    from appliance.machine import gpu

    report = gpu.detect(gpu.GpuProbe(docker_info=lambda: _docker_info(docker_url)))
    if not report.present:
        return Probe("n/a", "", detail=report.summary)
    version = f"driver {report.driver_version}" if report.driver_version else ""
    return Probe("up" if report.usable_for_containers else "degraded", version, detail=report.message)


def probe_http(url: str, title: str, context: ssl.SSLContext | None = None) -> Probe:
    """A component that says it is up with HTTP 200 at ``url`` (Prometheus' /-/ready, Grafana's
    /api/health over HTTPS, checked with ``context``...); its version where the answer names one."""
    status, body = _http_json(url, context=context)  # a certificate it does not trust raises: down
    version = title + (f" {body['version']}" if isinstance(body, dict) and body.get("version") else "")
    if status != 200:
        return Probe("down", version, detail=f"{url} answered {status}")
    return Probe("up", version, detail=f"{url} answers")


PROBES: dict[str, Callable[[str], Probe]] = {
    "database": probe_database, "bus": probe_bus, "documents": probe_documents,
    "objects": probe_objects, "inference": probe_inference, "ice_servers": probe_turn,
}
NAMES = {  # (scheme of the setting's URL) → component name shown
    "postgresql": "postgresql", "postgres": "postgresql", "redis": "redis", "mongodb": "mongodb",
    "s3": "minio", "triton": "triton", "turn": "coturn",
}


# ---------------------------------------------------------------------- the whole picture
def _containers(settings_file: Path) -> tuple[dict[str, tuple[str, str, int]], str | None]:
    """Container states from the install record next to the settings, when it and Docker can be read."""
    from appliance.machine.deploy import COMPONENTS, Engine

    record = _record(settings_file)
    if record is None or record.mode != "containers":
        return {}, record.docker_url if record else None
    try:
        import docker

        client = docker.DockerClient(base_url=record.docker_url, timeout=3)
        engine = Engine(client)
        states = {n: engine.container_state(COMPONENTS[n].container) for n in record.components}
        client.close()
    except Exception:  # no engine or no permission: report the protocols only
        return {}, record.docker_url
    return states, record.docker_url


def _record(settings_file: Path) -> Any:
    """The install record next to the settings (None: no install, or unreadable when not root)."""
    from appliance.machine.deploy import InstallRecord, Layout

    try:
        return InstallRecord.read(Layout(settings_file.parent.parent.parent))
    except Exception:  # unreadable (not root): the protocol answers are enough
        return None


def monitoring_targets(settings_file: Path) -> list[tuple[str, str, Callable[[], Probe]]]:
    """The observability components the install record names (Prometheus, Grafana...), each
    asked at its health URL; none when the record cannot be read (they serve no setting)."""
    from appliance.machine.deploy import COMPONENTS, Layout, health_context, health_url

    record = _record(settings_file)
    if record is None:
        return []
    layout = Layout(settings_file.parent.parent.parent)
    return [(name, COMPONENTS[name].setting, lambda n=name: probe_http(
                health_url(n, record, layout), COMPONENTS[n].title, health_context(n, record, layout)))
            for name in record.components if name in COMPONENTS and COMPONENTS[name].health]


CLIENT_MODULES = {"postgresql": "psycopg2", "postgres": "psycopg2", "redis": "redis", "mongodb": "pymongo",
                  "s3": "minio"}


def collect(settings: Settings, settings_file: Path) -> list[Probe]:
    containers, docker_url = _containers(settings_file)
    targets: list[tuple[str, str, Callable[[], Probe]]] = [("appliance", "", lambda: probe_appliance(settings))]
    urls = {"database": settings.database_url, "bus": settings.bus, "documents": settings.documents_url,
            "objects": settings.objects_url, "inference": settings.inference}
    def why_not_gpu() -> str:
        from appliance.machine import gpu

        return gpu.detect(gpu.GpuProbe(docker_info=lambda: _docker_info(docker_url))).summary

    for setting, url in urls.items():
        scheme = urlsplit(url).scheme
        name = NAMES.get(scheme, f"{setting} ({'embedded ' if scheme in ('sqlite', 'file') else ''}{scheme})")
        if setting == "inference" and scheme == "triton" and "," in url:  # a pool: a row per server
            for address in triton_addresses(url):
                targets.append((f"triton {address}", setting,
                                lambda u=f"triton://{address}": probe_inference(u, why_not_gpu)))
        elif setting == "inference":
            targets.append((name, setting, lambda u=url: probe_inference(u, why_not_gpu)))
        else:
            targets.append((name, setting, lambda p=PROBES[setting], u=url: p(u)))
    for server in settings.ice_servers:
        if server.startswith(("turn:", "stun:")):
            targets.append(("coturn", "ice_servers", lambda s=server: probe_turn(s)))
    targets += monitoring_targets(settings_file)
    targets.append(("gpu", "", lambda: probe_gpu(docker_url)))
    importlib.import_module("appliance.stores.urls")  # imported first, so that response times are the servers' own
    for url in urls.values():
        if urlsplit(url).scheme in CLIENT_MODULES:
            importlib.import_module(CLIENT_MODULES[urlsplit(url).scheme])
    with ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(lambda t: timed(t[2]), targets))
    for (name, serves, _), probe in zip(targets, results):
        probe.component, probe.serves = name, serves
        if name in containers:
            status, health, restarts = containers[name]
            note = f"container {status}" + (f", {health}" if health and status == "running" else "") + \
                (f", {restarts} restart(s)" if restarts else "")
            probe.detail = f"{probe.detail.rstrip('.')}; {note}" if probe.detail else note
            if probe.state == "up" and (status != "running" or health == "unhealthy"):
                probe.state = "degraded"
    if urlsplit(settings.bus).scheme in ("redis", "rediss"):  # every node sharing the bus: one row each
        results += probe_nodes(settings.bus)
    return results


def probe_nodes(bus: str) -> list[Probe]:
    """The appliance nodes sharing this install's Redis (appliance/cluster.py), one row each:
    up (serving, or drained: no new meetings), or down (it died without leaving)."""
    import asyncio

    from appliance.cluster import read_nodes

    try:
        nodes = asyncio.run(read_nodes(bus))
    except Exception as exc:  # the bus's own row says why Redis does not answer
        return [Probe("n/a", detail=f"the node registry cannot be read: {_first_line(exc)}", component="nodes")]
    rows = []
    for node in nodes:
        if not node.alive:
            rows.append(Probe("down", detail=f"{node.url or 'no URL'}: not heard of for over its lease "
                                             "(stopped without leaving, or dead); its meetings go to other nodes",
                              component=f"node {node.name}"))
            continue
        load = f"{node.meetings} meeting(s), {node.participants} participant(s)"
        rows.append(Probe("up", detail=f"{node.url}: {'drained (no new meetings), ' if node.drained else ''}{load}",
                          component=f"node {node.name}"))
    return rows


def overall(probes: list[Probe]) -> State:
    states = {p.state for p in probes}
    return "down" if "down" in states else "degraded" if "degraded" in states else "up"


