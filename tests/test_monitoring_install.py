"""What `confmeet install` writes for the observability layer (bundles/components.toml's
Prometheus, Alertmanager, Jaeger, Grafana, Loki and Promtail), without Docker: each component's
rendered configuration, checked by the program that reads it where Debian has that program
(promtool, amtool), else against what the program expects of it (Grafana, Loki and Promtail have
no Debian package: their files are checked for the keys and values those programs read, and the
Docker test in tests/test_install.py runs Prometheus and Alertmanager from them). Also the
install options (--retention, --alerts-*), the settings written (trace_endpoint, alerts_*) and
the doctor's warning when no alert receiver is configured. Grafana over HTTPS with the install's
certificate (the probe checked against a real TLS server), and the stores' exporters: present only
with their store, their Prometheus jobs in a config promtool passes (the Debian exporters scraped for
real by the Docker test in tests/test_install.py; MongoDB's only rendered: Debian's is a 2018 fork)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.machine.deploy import (COMPONENTS, DeployError, InstallOptions, InstallRecord, Layout, component_files,
                                      container_spec, monitoring_dir,
                                      health_url, render_settings, resolve, settings_for)
from appliance.machine.doctor import check_alert_receivers
from appliance.machine.observability import DASHBOARDS_DIR
from appliance.settings import load_settings

OBSERVABILITY = ["prometheus", "alertmanager", "jaeger", "grafana", "loki", "promtail"]
EXPORTERS = {"postgres_exporter": ("postgresql", 9187), "redis_exporter": ("redis", 9121),
             "mongodb_exporter": ("mongodb", 9216)}
SEED_PORTS = {"prometheus": 8801, "alertmanager": 8802, "jaeger": 8803, "grafana": 8804, "loki": 8805}
# The fields of the appliance's JSON log lines (appliance logging).
LOG_FIELDS = {"level", "logger", "message", "meeting_id", "participant_id", "request_id"}


def record_for(tmp_path: Path, **options: object) -> tuple[InstallRecord, Layout]:
    layout = Layout(tmp_path / "root")
    record = resolve(InstallOptions(root=layout.root, docker_url="unix:///nowhere", public_host="meet.example.org",
                                    **options), None, "containers")  # type: ignore[arg-type]
    return record, layout


def written(record: InstallRecord, layout: Layout) -> dict[Path, bytes]:
    """Write every component's files as the installer does; path → content."""
    files = {}
    for name in record.components:
        for path, (data, mode) in component_files(name, record, layout).items():
            # read by the container's own user (nobody, 472, 10001); a key by its group (Grafana's: 0)
            assert mode == (0o640 if path.name == "key.pem" else 0o644), path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            files[path] = data
    return files


def test_the_seed_ports_loopback_volumes_health_checks_and_retention(tmp_path: Path) -> None:
    record, layout = record_for(tmp_path, retention_days=30)
    placeholder_tls(layout)  # the appliance's certificate, which Grafana's tls/ mount gets a copy of
    assert {name: COMPONENTS[name].port for name in SEED_PORTS} == SEED_PORTS
    assert COMPONENTS["promtail"].port == 9080
    assert set(OBSERVABILITY) <= set(record.components)  # installed unless --components leaves them out
    for name in OBSERVABILITY:
        spec = container_spec(name, record, layout, gpu=False)
        assert COMPONENTS[name].image.split(":")[1], f"{name}: the official image is pinned"
        assert f"confmeet-{name}" in spec.volumes, name
        scheme = "https" if name == "grafana" else "http"
        assert spec.healthcheck and health_url(name, record, layout).startswith(f"{scheme}://127.0.0.1:"), name
        words = " ".join([*spec.command, *spec.environment.values(), *spec.healthcheck])
        assert "0.0.0.0" not in words and ":::" not in words, f"{name} listens beyond loopback: {words}"
        for source, target in spec.volumes.items():  # the rendered configuration is what is mounted
            if source.startswith(str(monitoring_dir(layout))):
                assert any(str(path).startswith(source) for path in component_files(name, record, layout)), source
    assert "--storage.tsdb.retention.time=30d" in container_spec("prometheus", record, layout, False).command
    assert "--data.retention=720h" in container_spec("alertmanager", record, layout, False).command
    assert "--badger.span-store-ttl=720h" in container_spec("jaeger", record, layout, False).command
    jaeger = container_spec("jaeger", record, layout, False).environment
    assert jaeger["COLLECTOR_OTLP_HTTP_HOST_PORT"] == "127.0.0.1:4318"
    assert jaeger["QUERY_HTTP_SERVER_HOST_PORT"] == "127.0.0.1:8803"
    grafana = container_spec("grafana", record, layout, False).environment
    assert (grafana["GF_SERVER_HTTP_ADDR"], grafana["GF_SERVER_HTTP_PORT"]) == ("127.0.0.1", "8804")
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == record.secrets["grafana"]


def test_prometheus_and_alertmanager_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    for tool in ("promtool", "amtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install prometheus prometheus-alertmanager")
    record, layout = record_for(tmp_path, alerts={"alerts_webhook_url": "https://chat.example.org/hook",
                                                  "alerts_email": "ops@example.org",
                                                  "alerts_smarthost": "mail.example.org:587"})
    (layout.tls_dir).mkdir(parents=True)
    (layout.tls_dir / "ca.pem").write_text("a CA")
    files = written(record, layout)
    prometheus = monitoring_dir(layout) / "prometheus"
    assert {p.name for p in prometheus.iterdir()} == {"prometheus.yml", "alerts.yml", "ca.pem"}
    config = yaml.safe_load(files[prometheus / "prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["confmeet"]["scheme"] == "https"
    assert jobs["confmeet"]["tls_config"]["ca_file"] == "/etc/prometheus/ca.pem"
    assert jobs["confmeet"]["static_configs"][0]["targets"] == ["127.0.0.1:443"]
    assert jobs["triton"]["static_configs"][0]["targets"] == ["127.0.0.1:8002"]  # Triton's metrics port
    assert set(jobs) == {"confmeet", "triton", *OBSERVABILITY, *EXPORTERS}
    for exporter, (_, port) in EXPORTERS.items():  # one job each, on its standard port
        assert jobs[exporter]["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
        assert jobs[exporter].get("scheme", "http") == "http"
    assert jobs["grafana"]["scheme"] == "https"  # Grafana's /metrics over its TLS, trusting the install's CA
    assert jobs["grafana"]["tls_config"] == {"ca_file": "/etc/prometheus/ca.pem"}
    assert jobs["jaeger"].get("scheme", "http") == "http" and "tls_config" not in jobs["jaeger"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:8802"]
    # promtool reads the files where the container sees them (/etc/prometheus): point it here.
    (prometheus / "check.yml").write_text(files[prometheus / "prometheus.yml"].decode()
                                          .replace("/etc/prometheus/", f"{prometheus}/"))
    checked = subprocess.run(["promtool", "check", "config", str(prometheus / "check.yml")], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    manager = monitoring_dir(layout) / "alertmanager/alertmanager.yml"
    checked = subprocess.run(["amtool", "check-config", str(manager)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    [receiver] = yaml.safe_load(manager.read_text())["receivers"]
    assert receiver["webhook_configs"][0]["url"] == "https://chat.example.org/hook"
    assert receiver["email_configs"][0]["smarthost"] == "mail.example.org:587"

    # Without Alertmanager, Triton and a generated CA: no alerting block, no triton job, the
    # appliance's certificate checked for its public name.
    bare, layout = record_for(tmp_path / "bare", components=["prometheus"], cert=_file(tmp_path, "c.pem"),
                              key=_file(tmp_path, "k.pem"))
    files = written(bare, layout)
    config = yaml.safe_load(files[monitoring_dir(layout) / "prometheus/prometheus.yml"])
    assert "alerting" not in config and [j["job_name"] for j in config["scrape_configs"]] == ["confmeet", "prometheus"]
    assert config["scrape_configs"][0]["tls_config"] == {"server_name": "meet.example.org"}


def placeholder_tls(layout: Layout) -> None:
    """The settings name the TLS files, which must exist for them to load (their content is not read)."""
    layout.tls_dir.mkdir(parents=True, exist_ok=True)
    for name in ("cert.pem", "key.pem"):
        (layout.tls_dir / name).write_text("placeholder")


def _file(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("x")
    return directory / name


def test_grafana_loki_and_promtail_files_hold_what_those_programs_read(tmp_path: Path) -> None:
    record, layout = record_for(tmp_path, retention_days=7, port_offset=1000)
    files = written(record, layout)
    grafana = monitoring_dir(layout) / "grafana"
    sources = yaml.safe_load(files[grafana / "provisioning/datasources/confmeet.yml"])["datasources"]
    assert {s["type"]: s["url"] for s in sources} == {"prometheus": "http://127.0.0.1:9801",
                                                      "loki": "http://127.0.0.1:9805",
                                                      "jaeger": "http://127.0.0.1:9803"}
    provider = yaml.safe_load(files[grafana / "provisioning/dashboards/confmeet.yml"])["providers"][0]
    mounts = container_spec("grafana", record, layout, False).volumes
    assert mounts[str(grafana / "dashboards")]["bind"] == provider["options"]["path"]  # where Grafana looks
    assert mounts[str(grafana / "provisioning")]["bind"] == \
        container_spec("grafana", record, layout, False).environment["GF_PATHS_PROVISIONING"]
    assert sorted(p.name for p in (grafana / "dashboards").iterdir()) == \
        sorted(p.name for p in DASHBOARDS_DIR.glob("*.json"))
    for board in (grafana / "dashboards").iterdir():
        assert json.loads(board.read_text())["uid"].startswith("confmeet-")

    loki = yaml.safe_load(files[monitoring_dir(layout) / "loki/loki.yml"])
    assert loki["server"]["http_listen_port"] == 9805 and loki["server"]["http_listen_address"] == "127.0.0.1"
    assert loki["server"]["grpc_listen_port"] == 9805 + COMPONENTS["loki"].extra_ports["grpc"]
    assert loki["limits_config"]["retention_period"] == "7d"
    assert loki["compactor"]["retention_enabled"] is True  # retention needs the compactor
    assert loki["compactor"]["shared_store"] == "filesystem"  # Loki 2.9 (the pinned image) requires it then
    [schema] = loki["schema_config"]["configs"]
    assert schema["store"] == "tsdb" and schema["index"]["period"] == "24h"  # tsdb requires a 24h period
    volume = container_spec("loki", record, layout, False).volumes["confmeet-loki"]["bind"]
    assert loki["common"]["path_prefix"] == volume

    promtail = yaml.safe_load(files[monitoring_dir(layout) / "promtail/promtail.yml"])
    assert promtail["clients"] == [{"url": "http://127.0.0.1:9805/loki/api/v1/push"}]
    assert promtail["server"]["http_listen_port"] == 10080
    assert promtail["positions"]["filename"].startswith(
        container_spec("promtail", record, layout, False).volumes["confmeet-promtail"]["bind"] + "/")
    [job] = promtail["scrape_configs"]
    assert "journal" in job
    keep, unit, component = job["relabel_configs"]
    assert keep["action"] == "keep"
    # Prometheus relabelling anchors its regular expressions at both ends: fullmatch.
    for name, kept in (("confmeet.service", True), ("confmeet-upgrade.service", True), ("ssh.service", False),
                       ("xconfmeet.service", False)):
        assert bool(re.fullmatch(keep["regex"], name)) == kept, name
    assert re.fullmatch(component["regex"], "confmeet.service").group(1) == "confmeet"
    assert component["target_label"] == "component"
    stages = job["pipeline_stages"]
    assert set(stages[0]["json"]["expressions"]) == LOG_FIELDS
    assert list(stages[1]["labels"]) == ["level"]  # a label; the ids stay in the line (unbounded values)


def test_settings_trace_endpoint_and_alert_receivers(tmp_path: Path) -> None:
    record, layout = record_for(tmp_path, alerts={"alerts_webhook_url": "https://hooks.example.org/a"})
    settings = settings_for(record, layout)
    assert settings["trace_endpoint"] == "http://127.0.0.1:4318"
    assert settings["alerts_webhook_url"] == "https://hooks.example.org/a"
    without, layout = record_for(tmp_path, components=["postgresql", "prometheus"])
    assert "trace_endpoint" not in settings_for(without, layout)
    # The settings file loads in the appliance with them.
    placeholder_tls(layout)
    config = tmp_path / "confmeet.toml"
    config.write_text(render_settings(record, layout))
    loaded = load_settings(config)
    assert loaded.trace_endpoint == "http://127.0.0.1:4318"
    assert loaded.alerts_webhook_url == "https://hooks.example.org/a"
    # A later install keeps them unless told otherwise; "" removes one.
    again = resolve(InstallOptions(root=layout.root, docker_url="unix:///nowhere", alerts={"alerts_email": "a@b.org",
                                   "alerts_smarthost": "mail.b.org:25"}), record, "containers")
    assert again.alerts == {"alerts_webhook_url": "https://hooks.example.org/a", "alerts_email": "a@b.org",
                            "alerts_smarthost": "mail.b.org:25"}
    cleared = resolve(InstallOptions(root=layout.root, alerts={"alerts_webhook_url": ""}), again, "containers")
    assert "alerts_webhook_url" not in cleared.alerts


@pytest.mark.parametrize(("options", "message"), [
    ({"alerts": {"alerts_email": "ops@example.org"}}, "--alerts-email needs --alerts-smarthost"),
    ({"alerts": {"alerts_webhook_url": "chat.example.org"}}, "http:// or https:// URL"),
    ({"alerts": {"alerts_email": "o@e.org", "alerts_smarthost": "mail"}}, "write HOST:PORT"),
    ({"retention_days": 0}, "--retention 0"),
])
def test_bad_monitoring_options_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(DeployError, match=re.escape(message)):
        record_for(tmp_path, **options)


def test_native_mode_leaves_the_layer_out(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    record = resolve(InstallOptions(root=layout.root), None, "native")
    assert not set(OBSERVABILITY) & set(record.components)
    assert all(not component_files(name, record, layout) for name in OBSERVABILITY)


def test_doctor_warns_when_alertmanager_has_no_receiver(tmp_path: Path) -> None:
    record, layout = record_for(tmp_path)
    layout.config_dir.mkdir(parents=True)
    layout.record_file.write_text(record.to_json())
    layout.config_file.write_text(render_settings(record, layout))
    placeholder_tls(layout)
    [finding] = check_alert_receivers(load_settings(layout.config_file))
    assert finding.status == "warn" and "no receiver" in finding.detail and "--alerts-webhook" in finding.fix

    record.alerts = {"alerts_email": "ops@example.org", "alerts_smarthost": "mail.example.org:587"}
    layout.config_file.write_text(render_settings(record, layout))
    [finding] = check_alert_receivers(load_settings(layout.config_file))
    assert finding.status == "pass" and "ops@example.org" in finding.detail

    record.components = ["postgresql"]  # no Alertmanager: nothing to say
    layout.record_file.write_text(record.to_json())
    assert check_alert_receivers(load_settings(layout.config_file)) == []


def test_backup_holds_the_monitoring_configuration_and_restore_returns_it(tmp_path: Path) -> None:
    """`confmeet backup create` (the CLI, embedded stores) takes <config dir>/monitoring/ — the
    alert rules, the provisioned dashboards — and a restore puts it back beside the settings'
    other backed-up files. (Grafana's database comes from its Docker volume: the installer test
    covers an install with Docker; here there is no install record, so none is asked for.)"""
    import tarfile

    from test_backup import Install

    from appliance.machine.observability import ALERTS

    install = Install(tmp_path / "data")
    monitoring = install.data_dir / "monitoring"  # the settings file's directory is the config dir
    for name, text in (("prometheus/alerts.yml", ALERTS.read_text()),
                       ("grafana/dashboards/overview.json", (DASHBOARDS_DIR / "overview.json").read_text())):
        (monitoring / name).parent.mkdir(parents=True, exist_ok=True)
        (monitoring / name).write_text(text)
    made = json.loads(install.ok("backup", "create", "--to", str(tmp_path / "archives"), "--json").stdout)
    archive = tmp_path / "archives" / made["archive"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert tar.extractfile("config/monitoring/prometheus/alerts.yml").read().decode() == ALERTS.read_text()
    assert "config/monitoring/grafana/dashboards/overview.json" in names
    install.ok("backup", "verify", str(archive))

    target = Install(tmp_path / "other")
    target.ok("backup", "restore", str(archive))
    restored = target.data_dir / "restored-config/monitoring/prometheus/alerts.yml"
    assert restored.read_text() == ALERTS.read_text()


def test_verify_takes_monitoring_files_but_no_path_out_of_them() -> None:
    from appliance.backup import BackupError
    from appliance.backup.verify import check_config

    assert check_config("config/monitoring/prometheus/alerts.yml", b"groups: []\n", None)
    for name in ("config/monitoring/../../etc/passwd", "config/other/file"):
        with pytest.raises(BackupError, match="no confmeet backup contains"):
            check_config(name, b"x", None)


def test_a_port_that_would_put_jaegers_otlp_below_1_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="choose a port from 4487"):
        record_for(tmp_path, ports={"jaeger": 4000})
    record, _ = record_for(tmp_path, ports={"jaeger": 4487})
    assert record.ports["jaeger"] == 4487


# ---------------------------------------------------------------------- Grafana over TLS
def serve_https(cert: Path, key: Path) -> tuple[str, "threading.Thread", "http.server.HTTPServer"]:
    """A real HTTPS server on loopback answering /api/health as Grafana does, with ``cert``/``key``."""
    import http.server
    import ssl
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = json.dumps({"database": "ok", "version": "11.2.0"}).encode()
            self.send_response(200 if self.path == "/api/health" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"https://127.0.0.1:{server.server_address[1]}/api/health", thread, server


def test_grafana_serves_https_with_the_installs_certificate_and_its_probe_checks_it(tmp_path: Path) -> None:
    """Grafana gets the appliance's certificate (issued by the install's CA, for 127.0.0.1 among its
    names) in tls/, mounted read-only where GF_SERVER_CERT_FILE/KEY point; the installer's and
    status' probe trusts that CA and no other; a renewed certificate changes the container's
    configuration digest (the install recreates Grafana with it)."""
    import datetime as dt

    from appliance.machine import tls
    from appliance.machine.deploy import config_digest, health_context
    from appliance.machine.probes import probe_http, timed

    record, layout = record_for(tmp_path)
    made = tls.ensure_certificates(layout.tls_dir, ["meet.example.org", "localhost", "127.0.0.1"])  # as install
    spec = container_spec("grafana", record, layout, False)
    env = spec.environment
    assert env["GF_SERVER_PROTOCOL"] == "https" and env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    where = monitoring_dir(layout) / "grafana/tls"
    assert spec.volumes[str(where)] == {"bind": "/etc/grafana/tls", "mode": "ro"}
    assert (Path(env["GF_SERVER_CERT_FILE"]).parent, Path(env["GF_SERVER_CERT_KEY"]).parent) == \
        (Path("/etc/grafana/tls"), Path("/etc/grafana/tls"))
    files = component_files("grafana", record, layout)
    assert files[where / Path(env["GF_SERVER_CERT_FILE"]).name] == (made.cert.read_bytes(), 0o644)
    assert files[where / Path(env["GF_SERVER_CERT_KEY"]).name] == (made.key.read_bytes(), 0o640)
    assert "https://" in " ".join(spec.healthcheck) and health_url("grafana", record, layout) == \
        "https://127.0.0.1:8804/api/health"

    written(record, layout)
    url, thread, server = serve_https(where / "cert.pem", where / "key.pem")
    try:
        context = health_context("grafana", record, layout)
        answer = timed(lambda: probe_http(url, "Grafana", context))
        assert (answer.state, answer.version) == ("up", "Grafana 11.2.0"), answer
        # A certificate some other CA issued is not Grafana's: down, saying why.
        other = tls.ensure_certificates(tmp_path / "other", ["127.0.0.1"])
        server.socket.context.load_cert_chain(other.cert, other.key)
        answer = timed(lambda: probe_http(url, "Grafana", health_context("grafana", record, layout)))
        assert answer.state == "down" and "CERTIFICATE_VERIFY_FAILED" in answer.detail, answer
    finally:
        server.shutdown()
        thread.join()

    # Renewal: the installer reissues the appliance's certificate 30 days before it expires; Grafana's
    # copy follows, and with it the digest the container is labelled with.
    before = config_digest("grafana", record, layout)
    later = tls.certificate_expiry(made.cert) - dt.timedelta(days=10)
    tls.ensure_certificates(layout.tls_dir, ["meet.example.org", "localhost", "127.0.0.1"], now=later)
    assert component_files("grafana", record, layout)[where / "cert.pem"][0] == made.cert.read_bytes()
    assert config_digest("grafana", record, layout) != before


def test_grafana_uses_the_operators_certificate_when_given(tmp_path: Path) -> None:
    from appliance.machine import tls
    from appliance.machine.deploy import health_context

    given = tls.ensure_certificates(tmp_path / "operator", ["meet.example.org"])
    record, layout = record_for(tmp_path, cert=given.cert, key=given.key)
    files = component_files("grafana", record, layout)
    where = monitoring_dir(layout) / "grafana/tls"
    assert files[where / "cert.pem"][0] == given.cert.read_bytes()
    assert files[where / "key.pem"][0] == given.key.read_bytes()
    # Its name is the public host's, not loopback's: Prometheus checks it for that name.
    config = yaml.safe_load(component_files("prometheus", record, layout)[monitoring_dir(layout) /
                                                                          "prometheus/prometheus.yml"][0])
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "grafana"]
    assert job["scheme"] == "https" and job["tls_config"] == {"server_name": "meet.example.org"}
    assert health_context("grafana", record, layout) is not None
    assert health_context("prometheus", record, layout) is None  # plain HTTP


# ---------------------------------------------------------------------- the stores' exporters
def test_exporters_come_with_their_store_on_loopback_with_its_credentials(tmp_path: Path) -> None:
    record, layout = record_for(tmp_path, port_offset=10)
    assert set(EXPORTERS) <= set(record.components)  # a default install has every store and Prometheus
    taken: dict[int, str] = {}
    for name, component in COMPONENTS.items():  # no port of one component is another's
        for port in [component.port, *(component.port + o for o in component.extra_ports.values())]:
            assert port not in taken, f"{name} and {taken.get(port)} both use {port}"
            taken[port] = name
    for name, (store, port) in EXPORTERS.items():
        component = COMPONENTS[name]
        assert component.port == port and component.exports == store
        image, tag = component.image.rsplit(":", 1)
        assert tag[0].isdigit() or tag.startswith("v"), f"{name}: the official image is pinned"
        spec = container_spec(name, record, layout, False)
        assert spec.healthcheck and spec.volumes == {}
        assert health_url(name, record, layout) == f"http://127.0.0.1:{port + 10}/"
        assert f"--web.listen-address=127.0.0.1:{port + 10}" in spec.command
        words = " ".join([*spec.command, *spec.environment.values(), *spec.healthcheck])
        assert "0.0.0.0" not in words and ":::" not in words, words
    assert container_spec("postgres_exporter", record, layout, False).environment["DATA_SOURCE_NAME"] == \
        f"postgresql://confmeet:{record.secrets['postgresql']}@127.0.0.1:5442/confmeet?sslmode=disable"
    redis = container_spec("redis_exporter", record, layout, False).environment
    assert (redis["REDIS_ADDR"], redis["REDIS_PASSWORD"]) == ("redis://127.0.0.1:6389", record.secrets["redis"])
    assert "--mongodb.uri=mongodb://127.0.0.1:27027/admin" in container_spec("mongodb_exporter", record, layout,
                                                                             False).command
    # The credentials are in the container's environment only: not in its command line, nor in
    # the settings file's comments or the plan's files.
    for name in EXPORTERS:
        assert not component_files(name, record, layout)
        assert record.secrets["postgresql"] not in " ".join(container_spec(name, record, layout, False).command)


@pytest.mark.parametrize(("components", "kept"), [
    (["postgresql", "prometheus", "postgres_exporter", "redis_exporter", "redis"],
     ["postgres_exporter", "redis_exporter"]),
    (["postgresql", "redis", "prometheus"], []),  # left out by --components
    (["postgresql", "mongodb", "prometheus", "mongodb_exporter"], ["mongodb_exporter"]),
])
def test_exporters_only_where_their_store_is(tmp_path: Path, components: list[str], kept: list[str]) -> None:
    record, layout = record_for(tmp_path, components=components)
    assert [n for n in record.components if n in EXPORTERS] == kept
    files = written(record, layout)
    config = yaml.safe_load(files[monitoring_dir(layout) / "prometheus/prometheus.yml"])
    assert [j["job_name"] for j in config["scrape_configs"] if j["job_name"] in EXPORTERS] == kept


@pytest.mark.parametrize(("components", "message"), [
    (["redis", "prometheus", "postgres_exporter"], "postgres_exporter exports postgresql's metrics to Prometheus: "
                                                   "add postgresql to --components"),
    (["redis", "redis_exporter"], "add prometheus to --components, or leave redis_exporter out"),
])
def test_an_exporter_without_its_store_is_refused(tmp_path: Path, components: list[str], message: str) -> None:
    with pytest.raises(DeployError, match=re.escape(message)):
        record_for(tmp_path, components=components)


def test_a_later_install_drops_an_exporter_with_its_store(tmp_path: Path) -> None:
    """Native mode keeps only Debian's units: no Prometheus, so no exporter either, with no error."""
    record, layout = record_for(tmp_path)
    native = resolve(InstallOptions(root=layout.root), record, "native")
    assert not set(EXPORTERS) & set(native.components)
