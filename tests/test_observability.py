"""The observability layer with real parts: Debian's Prometheus 2.42 and Alertmanager 0.25 against
a real appliance served over TLS, with a meeting under way (two aiortc participants, one
speaking espeak-ng English, captions on, transcribed in the appliance's SFU worker):

* the shipped rules and the rendered configurations pass ``promtool`` and ``amtool``;
* every PromQL expression of every shipped dashboard and alert rule evaluates without error in
  that Prometheus and returns series (for a rule, the side of its comparison that is a series);
* stopping the appliance makes ConfmeetDown fire and reach Alertmanager (read back from its API);
* a real ``confmeet loadtest`` behind an impaired link (tests/impair.py: loss, delay, jitter) and
  Prometheus scraping the appliance every second agree on each room's loss, jitter, round trip
  and bitrate over the load test's window, within 10 %.

Grafana, Loki and Jaeger have no package that runs here (their official images are what an
install deploys): their provisioning is checked for what Grafana reads of it — the data source
uids the dashboards name exist, each panel queries Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from aiortc.contrib.media import MediaPlayer

from appliance.machine.observability import (ALERTS, DASHBOARDS_DIR, OBSERVABILITY_DIR, Scrape, alertmanager_config,
                                          dashboard_expressions, grafana_datasources, prometheus_config)
from appliance.machine.tls import generate_ca, issue_server_certificate
from appliance.inference.models import import_models
from appliance_server import CONFMEET, Appliance, start_appliance
from captions.conftest import SCRIPT, speak
from cli.client.participant import Participant
from conftest import free_port, stop, wait_port
from impair import HOST_ADDRESS, NS_ADDRESS, ImpairedLink, Impairment
from sfu.participants import ColourTrack, ToneTrack

PROMETHEUS, ALERTMANAGER = "/usr/bin/prometheus", "/usr/bin/prometheus-alertmanager"
ADA, GRACE = ("ada@example.com", "ada password 1"), ("grace@example.com", "grace password 1")
REPO = Path(__file__).resolve().parents[1]
COMPARISON = re.compile(r"\s(?:>|<|==|!=|>=|<=)\s")


@dataclass
class Stack:
    appliance: Appliance
    prometheus: str
    alertmanager: str
    ca: Path


def start_prometheus(work: Path, scrape: Scrape, rules: Path = ALERTS) -> tuple[subprocess.Popen, str]:
    """Debian's Prometheus scraping as ``scrape`` says, its data under ``work``; it and its URL."""
    port = free_port()
    (work / "prometheus.yml").write_text(prometheus_config(scrape, rules=rules))
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, process)
    except RuntimeError:
        stop(process)
        raise
    return process, f"http://127.0.0.1:{port}"


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    """The instant query's result (at unix time ``at``, default now)."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    r = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def series_side(expr: str) -> str:
    """The series a rule compares with its threshold (the left of the last comparison)."""
    *left, _ = COMPARISON.split(expr)
    return " ".join(left) if left else expr


def test_the_shipped_files_pass_promtool_and_amtool(tmp_path: Path) -> None:
    for tool in (PROMETHEUS, ALERTMANAGER):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install prometheus prometheus-alertmanager (make system-packages)")
    checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(Scrape("127.0.0.1:8800", "127.0.0.1:8802", "127.0.0.1:8002", https=True,
                                               ca_file=str(tmp_path / "ca.pem"), token_file=str(tmp_path / "token"))))
    for name in ("ca.pem", "token"):
        (tmp_path / name).write_text("x")
    checked = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    manager = tmp_path / "alertmanager.yml"
    manager.write_text(alertmanager_config(webhook_url="https://chat.example.org/hooks/ops", email="ops@example.org",
                                           smarthost="mail.example.org:587"))
    checked = subprocess.run(["amtool", "check-config", str(manager)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_reads_data_sources_the_dashboards_name() -> None:
    sources = yaml.safe_load(grafana_datasources("http://127.0.0.1:8801", "http://127.0.0.1:8805",
                                                 "http://127.0.0.1:16686"))["datasources"]
    uids = {s["uid"]: s["type"] for s in sources}
    assert set(uids.values()) == {"prometheus", "loki", "jaeger"}
    boards = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert [b.name for b in boards] == ["captions.json", "meetings.json", "overview.json", "stores.json"]
    for board in boards:
        dashboard = json.loads(board.read_text())
        assert dashboard["uid"].startswith("confmeet-") and dashboard["panels"]
        for panel in dashboard["panels"]:
            assert uids[panel["datasource"]["uid"]] == "prometheus" and panel["targets"], (board.name, panel["title"])
    provider = yaml.safe_load((OBSERVABILITY_DIR / "grafana" / "dashboards.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("observability")
    ca = generate_ca(work / "ca")
    server = issue_server_certificate(work, ca, ["127.0.0.1", "localhost"])
    models = work / "model_repository"
    import_models("packages", models)
    app = start_appliance(work / "appliance", ca=ca.cert, media_loopback="true", sfu_workers="2",
                          inference="local://", model_repository=str(models),
                          tls_cert=str(server.cert), tls_key=str(server.key))
    app.add_user(*ADA, admin=True)
    app.add_user(*GRACE)
    processes: list[subprocess.Popen] = []
    try:
        manager_port = free_port()
        (work / "alertmanager.yml").write_text(alertmanager_config(webhook_url="http://127.0.0.1:9/hook",
                                                                   group_wait="1s"))
        processes.append(subprocess.Popen(
            [ALERTMANAGER, f"--config.file={work / 'alertmanager.yml'}", f"--storage.path={work / 'am'}",
             f"--web.listen-address=127.0.0.1:{manager_port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # The shipped rules, with ConfmeetDown firing at once instead of after a minute.
        rules = yaml.safe_load(ALERTS.read_text())
        for rule in rules["groups"][0]["rules"]:
            if rule["alert"] == "ConfmeetDown":
                rule["for"] = "0s"
        (work / "alerts.yml").write_text(yaml.safe_dump(rules))
        wait_port(manager_port, processes[0])
        port = app.url.rsplit(":", 1)[1]
        prometheus, url = start_prometheus(work, Scrape(
            f"127.0.0.1:{port}", f"127.0.0.1:{manager_port}", f"127.0.0.1:{free_port()}", https=True,
            ca_file=str(ca.cert), scrape_interval="1s"), rules=work / "alerts.yml")
        processes.append(prometheus)
        yield Stack(app, url, f"http://127.0.0.1:{manager_port}", ca.cert)
    finally:
        for process in processes:
            stop(process)
        stop(app.proc)


async def test_every_dashboard_and_alert_expression_returns_series_and_a_stop_alerts(
        stack: Stack, tmp_path: Path) -> None:
    app, tls = stack.appliance, ssl.create_default_context(cafile=str(stack.ca))
    ada_token, grace_token = app.login(*ADA)["access_token"], app.login(*GRACE)["access_token"]
    meeting = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "observed"}, verify=app.verify,
                         headers={"Authorization": f"Bearer {ada_token}"}).json()
    wav = speak(SCRIPT, tmp_path / "speech.wav")
    ada, grace = Participant(app.url, ada_token, tls=tls), Participant(app.url, grace_token, tls=tls)
    try:
        for client, name in ((ada, "Ada"), (grace, "Grace")):
            await client.connect()
            assert (await client.join(meeting["code"], name))["type"] == "joined"
        ada.publish(MediaPlayer(str(wav), loop=True).audio)
        grace.publish(ToneTrack())
        grace.publish(ColourTrack())
        for client in (ada, grace):
            assert (await client.offer())["type"] == "answer"
        assert (await ada.request({"type": "set_captions", "enabled": True, "language": "en"}))["type"] == "ok"
        # Until a final caption has been sent and scraped, and the receivers have reported.
        deadline = time.monotonic() + 90
        needed = ['rate(confmeet_captions_latency_seconds_bucket{kind="final"}[5m])',  # two scrapes of a final
                  'confmeet_captions_stage_seconds_bucket{stage="asr"}', "confmeet_room_rtt_seconds",
                  "rate(confmeet_sfu_worker_cpu_seconds_total[1m])", "confmeet_inference_model_ready"]
        while missing := [e for e in needed if not await asyncio.to_thread(query, stack.prometheus, e)]:
            assert time.monotonic() < deadline, f"no series yet for {missing}"
            await asyncio.sleep(1)

        for board, expressions in dashboard_expressions().items():
            for expr in expressions:
                assert await asyncio.to_thread(query, stack.prometheus, expr), f"{board}: no series for {expr}"
        for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]:
            await asyncio.to_thread(query, stack.prometheus, rule["expr"])  # evaluates
            assert await asyncio.to_thread(query, stack.prometheus, series_side(rule["expr"])), rule["alert"]
        firing = httpx.get(f"{stack.prometheus}/api/v1/alerts").json()["data"]["alerts"]
        assert [a["labels"]["alertname"] for a in firing if a["state"] == "firing"] == []  # a healthy appliance
    finally:
        await ada.close()
        await grace.close()

    stop(app.proc)  # the appliance goes away
    deadline = time.monotonic() + 30
    while True:
        alerts = httpx.get(f"{stack.alertmanager}/api/v2/alerts").json()
        if any(a["labels"]["alertname"] == "ConfmeetDown" for a in alerts):
            break
        assert time.monotonic() < deadline, "ConfmeetDown did not reach Alertmanager"
        await asyncio.sleep(0.5)
    [down] = [a for a in alerts if a["labels"]["alertname"] == "ConfmeetDown"]
    assert down["labels"]["severity"] == "critical" and down["annotations"]["fix"]


@pytest.mark.slow
def test_prometheus_shows_each_rooms_link_as_the_load_test_measures_it(tmp_path: Path) -> None:
    """The load test runs in a namespace behind 2 % loss and 40 ± 10 ms of delay each way: one
    publisher, three subscribers, 30 s. Its own figures (the subscribers' receivers, their ICE
    round trips) and Prometheus's over its window must agree within 10 %: loss and bitrate as
    rates, jitter as a mean, the round trip as a median (a median leaves out the stalls of a busy
    machine, which a mean of so few samples does not)."""
    base = random.randrange(20000, 30000, 100)
    with ImpairedLink("cm-link", Impairment(delay_ms=40, jitter_ms=10, loss=0.02)) as link:
        app = start_appliance(tmp_path / "appliance", timeout=90, host=HOST_ADDRESS, sfu_workers="1",
                              metrics_addresses=f"{HOST_ADDRESS},{NS_ADDRESS}",
                              media_udp_min=str(base), media_udp_max=str(base + 99))
        processes = [app.proc]
        try:
            app.add_user(*ADA, admin=True)
            port = app.url.rsplit(":", 1)[1]
            prometheus, url = start_prometheus(tmp_path, Scrape(
                f"{HOST_ADDRESS}:{port}", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                scrape_interval="1s"))
            processes.append(prometheus)
            env = {**os.environ, "CONFMEET_TEST_PASSWORD": ADA[1],
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            run = subprocess.run(link.command(
                [*CONFMEET, "loadtest", "--url", app.url, "--email", ADA[0], "--password-env", "CONFMEET_TEST_PASSWORD",
                 "--publishers", "1", "--subscribers", "3", "--workers", "1", "--decode", "0",
                 "--duration", "30", "--settle", "3", "--join-rate", "3", "--json"]),
                env=env, capture_output=True, text=True, timeout=240)
            assert run.returncode == 0, run.stderr + run.stdout
            report = json.loads(run.stdout)
            [room] = report["rooms"]
            ours, window = room["subscribers"], report["window"]
            # The series reach Prometheus about a second late (a worker reports every second,
            # Prometheus scrapes every second).
            at, span = window["end"] + 1, f"{round(1000 * (window['end'] - window['start']))}ms"

            def value(expr: str) -> float:
                [series] = query(url, expr.replace("ROOM", f'room="{room["room"]}"').replace("SPAN", span), at)
                return float(series["value"][1])

            theirs = {
                "loss": value("sum(increase(confmeet_room_downlink_packets_lost_total{ROOM}[SPAN]))"
                              " / sum(increase(confmeet_room_downlink_packets_sent_total{ROOM}[SPAN]))"),
                "jitter_ms": 1000 * value("avg_over_time(confmeet_room_downlink_jitter_seconds{ROOM}[SPAN])"),
                "rtt_ms": 1000 * value("quantile_over_time(0.5, confmeet_room_rtt_seconds{ROOM}[SPAN])"),
                "kbps": 8 * value("rate(confmeet_room_forwarded_bytes_total{ROOM}[SPAN])") / 1000,
            }
        finally:
            for process in processes:
                stop(process)
    print(f"load test {ours}, Prometheus {theirs}")
    # The link was what it was set to be: at least the 2 % lost on the way down (the way up loses
    # what retransmission does not recover), two delays of 40 ± 10 ms (and what a busy machine
    # adds to them), ~850 kbit/s to each subscriber.
    assert 0.02 <= ours["loss"] <= 0.05 and 80 <= ours["rtt_ms"] <= 200 and 2 <= ours["jitter_ms"] <= 40, ours
    assert 3 * 700 <= ours["kbps"] <= 3 * 1000, ours
    for figure in ("loss", "jitter_ms", "rtt_ms", "kbps"):
        assert theirs[figure] == pytest.approx(ours[figure], rel=0.10), (figure, ours, theirs)
