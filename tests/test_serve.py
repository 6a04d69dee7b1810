"""`confmeet serve` as an operator runs it: first-start setup link, CORS, clean shutdown, clear errors."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from appliance_server import CONFMEET, appliance_env, start_appliance
from conftest import free_port, stop


def test_first_start_writes_a_one_time_setup_link(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, cors_origins="https://portal.example")
    try:
        link = tmp_path / "setup-link"
        assert str(link) in app.output()  # the log says where the link is, not what it is
        match = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/#setup=(\S+)", link.read_text().strip())
        assert match, link.read_text()
        assert match.group(1) == app.url
        body = {"token": match.group(2), "email": "first@example.com", "password": "first admin pw",
                "name": "First Admin"}
        wrong = httpx.post(f"{app.url}/api/v1/setup", json={**body, "token": "guessed"})
        assert wrong.status_code == 403
        created = httpx.post(f"{app.url}/api/v1/setup", json=body)
        assert created.status_code == 201 and created.json()["role"] == "admin"
        assert httpx.post(f"{app.url}/api/v1/setup", json=body).status_code == 409  # one time only
        login = httpx.post(f"{app.url}/api/v1/auth/login", json={"email": body["email"], "password": body["password"]})
        assert login.status_code == 200

        # CORS: the configured origin may call the API from a browser, others may not
        pre = httpx.options(f"{app.url}/api/v1/meetings", headers={
            "Origin": "https://portal.example", "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://portal.example"
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        denied = httpx.options(f"{app.url}/api/v1/meetings", headers={"Origin": "https://evil.example"})
        assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers
        plain = httpx.get(f"{app.url}/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
    finally:
        stop(app.proc)


def test_sigterm_shuts_down_cleanly(tmp_path: Path) -> None:
    app = start_appliance(tmp_path)
    app.proc.send_signal(signal.SIGTERM)
    assert app.proc.wait(15) == 0
    assert "Traceback" not in app.output()


def test_unreachable_database_is_reported_with_the_fix(tmp_path: Path) -> None:
    env = appliance_env(tmp_path, free_port(), database="postgresql://confmeet@127.0.0.1:1/confmeet")
    done = subprocess.run([*CONFMEET, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot connect to the database" in done.stderr and "Check that the server runs" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_wrong_url_in_settings_is_reported(tmp_path: Path) -> None:
    env = appliance_env(tmp_path, free_port(), objects="ftp://files.example/x")
    done = subprocess.run([*CONFMEET, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'objects'" in done.stderr and "file://" in done.stderr


def test_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = appliance_env(tmp_path, port)
        started = time.monotonic()
        done = subprocess.run([*CONFMEET, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode != 0
    assert "choose another --port" in done.stderr + done.stdout


def test_refuses_to_serve_a_half_restored_install(tmp_path: Path) -> None:
    (tmp_path / "restore-state.json").write_text("{}")
    env = appliance_env(tmp_path, free_port())
    done = subprocess.run([*CONFMEET, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--resume" in done.stderr and "Traceback" not in done.stderr
