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
    """Where Prometheus finds what it scrapes and whom it alerts."""

    appliance: str  # HOST:PORT
    alertmanager: str  # HOST:PORT
    triton: str  # HOST:PORT of Triton's metrics
    https: bool = False
    ca_file: str = ""  # the CA that signed the appliance's certificate (https)
    token_file: str = ""  # a file holding the appliance's metrics_token, when Prometheus is not on loopback
    scrape_interval: str = "15s"


def prometheus_config(scrape: Scrape, rules: Path = ALERTS) -> str:
    auth = []
    if scrape.https and scrape.ca_file:
        auth += ["    tls_config:", f"      ca_file: {json.dumps(scrape.ca_file)}"]
    if scrape.token_file:
        auth += ["    authorization:", "      type: Bearer", f"      credentials_file: {json.dumps(scrape.token_file)}"]
    template = (OBSERVABILITY_DIR / "prometheus.yml.in").read_text()
    return template.format(scrape_interval=scrape.scrape_interval, rules=json.dumps(str(rules)),
                           alertmanager=scrape.alertmanager, scheme="https" if scrape.https else "http",
                           appliance=scrape.appliance, appliance_auth="\n".join(auth), triton=scrape.triton)


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
    template = (OBSERVABILITY_DIR / "grafana" / "datasources.yml.in").read_text()
    return template.format(prometheus=prometheus, loki=loki, jaeger=jaeger)


def dashboard_expressions() -> dict[str, list[str]]:
    """Every PromQL expression of every shipped dashboard, by dashboard file."""
    return {path.name: [target["expr"] for panel in json.loads(path.read_text())["panels"]
                        for target in panel["targets"]]
            for path in sorted(DASHBOARDS_DIR.glob("*.json"))}
