"""The confmeet command as an operator uses it: clear messages, non-zero exits, --json for scripts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from appliance_server import CONFMEET, appliance_env
from conftest import free_port


def run(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CONFMEET, *args], env=env, input=input, capture_output=True, text=True, timeout=60)


def test_user_add_and_list(tmp_path: Path) -> None:
    env = appliance_env(tmp_path, free_port())
    added = run(env, "user", "add", "Ada@Example.com", "--admin", "--name", "Ada", "--password-stdin",
                input="long enough password\n")
    assert added.returncode == 0, added.stderr
    assert "created admin ada@example.com" in added.stdout
    listed = json.loads(run(env, "user", "list", "--json").stdout)
    assert [(u["email"], u["role"], u["name"], u["active"]) for u in listed] == [("ada@example.com", "admin", "Ada", True)]
    table = run(env, "user", "list").stdout
    assert "ada@example.com" in table and "1 user(s)" in table


def test_user_add_refuses_bad_input_without_traceback(tmp_path: Path) -> None:
    env = appliance_env(tmp_path, free_port())
    short = run(env, "user", "add", "x@example.com", "--password-stdin", input="short\n")
    assert short.returncode == 2 and "password" in short.stderr and "at least 8" in short.stderr
    bad_email = run(env, "user", "add", "not-an-email", "--password-stdin", input="long enough password\n")
    assert bad_email.returncode == 2 and "email" in bad_email.stderr
    assert run(env, "user", "add", "x@example.com", "--password-stdin", input="long enough password\n").returncode == 0
    again = run(env, "user", "add", "x@example.com", "--password-stdin", input="long enough password\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    for result in (short, bad_email, again):
        assert "Traceback" not in result.stderr + result.stdout


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    env = appliance_env(tmp_path, free_port(), database="postgresql://confmeet:hunter2@db.example/confmeet",
                        secret_key="s" * 48)
    shown = run(env, "config", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["settings"]["database"] == "postgresql://confmeet:********@db.example/confmeet"
    assert data["settings"]["secret_key"] == "********"
    assert "hunter2" not in shown.stdout and "s" * 48 not in shown.stdout
    table = run(env, "config", "show").stdout
    assert "hunter2" not in table and "objects" in table


def test_config_errors_name_the_fix(tmp_path: Path) -> None:
    env = appliance_env(tmp_path, free_port(), bus="kafka://broker")
    shown = run(env, "config", "show")
    assert shown.returncode == 2 and "memory://" in shown.stderr and "Traceback" not in shown.stderr
