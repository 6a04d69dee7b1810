"""The observability layer's configuration (bundles/observability/): Prometheus scraping the
appliance and Triton with confmeet's alert rules, Alertmanager routing to the operators, Grafana's
data sources and dashboards. Rendered from the bundle's templates for the addresses an install
(or a test) uses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .images import BUNDLES_DIR

OBSERVABILITY_DIR = BUNDLES_DIR / "observability"
ALERTS = OBSERVABILITY_DIR / "alerts.yml"
DASHBOARDS_DIR = OBSERVABILITY_DIR / "grafana" / "dashboards"


@dataclass(frozen=True)
class Scrape:
    """Where Prometheus finds what it scrapes and whom it alerts ("": not there)."""

    appliance: str  # HOST:PORT
    alertmanager: str  # HOST:PORT
    triton: str  # HOST:PORT of Triton's metrics
    https: bool = False
    ca_file: str = ""  # the CA that signed the appliance's certificate (https)
    token_file: str = ""  # a file holding the appliance's metrics_token, when Prometheus is not on loopback
    server_name: str = ""  # the name the appliance's certificate is checked against, when not the target's
    scrape_interval: str = "15s"
    jobs: tuple[tuple[str, str], ...] = ()  # (job, HOST:PORT): more /metrics to scrape (the layer's own, exporters)
    https_jobs: tuple[str, ...] = ()  # those of ``jobs`` served over HTTPS with the appliance's certificate


def prometheus_config(scrape: Scrape, rules: Path | str = ALERTS) -> str:
    tls = []
    if scrape.ca_file or scrape.server_name:
        tls.append("    tls_config:")
        if scrape.ca_file:
            tls.append(f"      ca_file: {json.dumps(scrape.ca_file)}")
        if scrape.server_name:
            tls.append(f"      server_name: {json.dumps(scrape.server_name)}")
    auth = list(tls) if scrape.https else []
    if scrape.token_file:
        auth += ["    authorization:", "      type: Bearer", f"      credentials_file: {json.dumps(scrape.token_file)}"]
    alerting = "" if not scrape.alertmanager else (
        f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{scrape.alertmanager}\"]\n")
    jobs = ([("triton", scrape.triton)] if scrape.triton else []) + list(scrape.jobs)
    other = "\n".join(f"  - job_name: {job}\n"
                      + ("    scheme: https\n" + "".join(f"{line}\n" for line in tls) if job in scrape.https_jobs else "")
                      + f"    static_configs:\n      - targets: [\"{target}\"]"
                      for job, target in jobs)
    template = (OBSERVABILITY_DIR / "prometheus.yml.in").read_text()
    text = template.format(scrape_interval=scrape.scrape_interval, rules=json.dumps(str(rules)), alerting=alerting,
                           scheme="https" if scrape.https else "http", appliance=scrape.appliance,
                           appliance_auth="\n".join(auth), other_jobs=other)
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def alertmanager_config(webhook_url: str = "", email: str = "", smarthost: str = "",
                        group_wait: str = "30s") -> str:
    """Every alert to a webhook and/or by e-mail (through ``smarthost``, HOST:PORT)."""
    receivers = []
    if webhook_url:
        receivers += ["    webhook_configs:", f"      - url: {json.dumps(webhook_url)}", "        send_resolved: true"]
    if email:
        receivers += ["    email_configs:", f"      - to: {json.dumps(email)}", f"        from: {json.dumps(email)}",
                      f"        smarthost: {json.dumps(smarthost)}", "        send_resolved: true"]
    template = (OBSERVABILITY_DIR / "alertmanager.yml.in").read_text()
    return template.format(group_wait=group_wait, receivers="\n".join(receivers))


def grafana_datasources(prometheus: str, loki: str, jaeger: str) -> str:
    """The data sources; one whose URL is "" (not installed) is left out."""
    template = (OBSERVABILITY_DIR / "grafana" / "datasources.yml.in").read_text()
    head, *sources = template.split("\n  - name: ")
    kept = [s for s in sources if "url: {" not in s or
            {"prometheus": prometheus, "loki": loki, "jaeger": jaeger}[s.split("url: {", 1)[1].split("}", 1)[0]]]
    return "\n  - name: ".join([head, *kept]).format(prometheus=prometheus, loki=loki, jaeger=jaeger)


def dashboard_expressions() -> dict[str, list[str]]:
    """Every PromQL expression of every shipped dashboard, by dashboard file."""
    return {path.name: [target["expr"] for panel in json.loads(path.read_text())["panels"]
                        for target in panel["targets"]]
            for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def loki_config(bind: str, port: int, grpc_port: int, retention: str) -> str:
    template = (OBSERVABILITY_DIR / "loki.yml.in").read_text()
    return template.format(bind=bind, port=port, grpc_port=grpc_port, retention=retention)


def promtail_config(bind: str, port: int, loki: str) -> str:
    """``loki``: Loki's base URL (http://HOST:PORT)."""
    template = (OBSERVABILITY_DIR / "promtail.yml.in").read_text()
    return template.format(bind=bind, port=port, loki=loki)
