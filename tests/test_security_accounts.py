"""Accounts under attack, against the running appliance (issue 12, findings 2, 4, 5 and 8): the
setup link, sessions that must end, guessing passwords, refresh-token theft, file modes, headers,
/metrics and TURN credentials.

One appliance serves most tests. It trusts one proxy (``forwarded_proxies=1``), so each test sends
``X-Forwarded-For`` with an address of its own (documentation ranges) and the per-address limits of
one test never touch another's.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from appliance_server import Appliance, start_appliance
from conftest import stop
from cli.client.participant import Participant

ADMIN = ("admin@example.com", "admin password 1")
USERS = {"ada": ("ada@example.com", "ada password 1"), "bob": ("bob@example.com", "bob password 1"),
         "cat": ("cat@example.com", "cat password 1")}
LIMITS = {"login_failures_per_account": "3", "login_failures_per_address": "5", "lockout_seconds": "1",
          "lockout_max_seconds": "60", "password_failures_per_address": "3", "password_failures_per_meeting": "5",
          "guest_tokens_per_address": "3"}


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("accounts"), forwarded_proxies="1", session_check_seconds="1",
                          metrics_addresses="192.0.2.250", metrics_token="scrape-token-0123456789",
                          ice_servers="turn:127.0.0.1:3478", turn_credential_minutes="5", **LIMITS)
    app.add_user(*ADMIN, admin=True)
    for email, password in USERS.values():
        app.add_user(email, password)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def sender(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def login(app: Appliance, email: str, password: str, address: str) -> httpx.Response:
    return httpx.post(f"{app.url}/api/v1/auth/login", json={"email": email, "password": password},
                      headers=sender(address))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit(app: Appliance, action: str) -> list[dict]:
    token = login(app, *ADMIN, "203.0.113.250").json()["access_token"]
    r = httpx.get(f"{app.url}/api/v1/audit", params={"action": action, "limit": 500}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["events"]


def new_meeting(app: Appliance, **fields) -> dict:
    token = login(app, *USERS["ada"], "203.0.113.251").json()["access_token"]
    r = httpx.post(f"{app.url}/api/v1/meetings", json={"title": "security", **fields}, headers=bearer(token))
    assert r.status_code == 201, r.text
    return r.json()


# ---------------------------------------------------------------------------- finding 5: guessing
def test_guessing_an_accounts_password_is_locked_out_with_backoff(appliance: Appliance) -> None:
    email, password = USERS["bob"]
    where = "198.51.100.1"
    for _ in range(3):
        assert login(appliance, email, "wrong guess", where).status_code == 401
    locked = login(appliance, email, password, where)  # even the right password waits
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"]["code"] == "too_many_requests"
    first_wait = int(locked.headers["retry-after"])
    assert first_wait >= 1
    # the lockout holds for the account from any address
    assert login(appliance, email, password, "198.51.100.2").status_code == 429
    time.sleep(first_wait + 0.1)
    where = "198.51.100.13"  # (the first address nears its own limit, 5)
    for _ in range(3):
        assert login(appliance, email, "wrong again", where).status_code == 401
    second = login(appliance, email, password, where)
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 2 * first_wait  # it doubles
    time.sleep(int(second.headers["retry-after"]) + 0.1)
    assert login(appliance, email, password, where).status_code == 200
    lockouts = [e for e in audit(appliance, "security.lockout") if e["detail"]["key"] == email]
    assert [e["detail"]["rule"] for e in lockouts] == ["login_account", "login_account"]


def test_one_address_guessing_many_accounts_is_locked_out(appliance: Appliance) -> None:
    where = "198.51.100.3"
    for i in range(5):
        assert login(appliance, f"nobody{i}@example.com", "guess", where).status_code == 401
    r = login(appliance, *USERS["cat"], where)
    assert r.status_code == 429 and "retry-after" in r.headers
    assert login(appliance, *USERS["cat"], "198.51.100.4").status_code == 200  # others are not affected
    assert any(e["detail"] == {"rule": "login_address", "key": where, "seconds": 1.0}
               for e in audit(appliance, "security.lockout"))


def guest(app: Appliance, code: str, address: str, password: str | None = None, name: str = "Gus",
          client: httpx.Client | None = None) -> httpx.Response:
    body = {"name": name, **({"password": password} if password is not None else {})}
    return (client or httpx).post(f"{app.url}/api/v1/meetings/by-code/{code}/guest", json=body,
                                  headers=sender(address))


def test_guessing_a_meeting_password_is_limited_per_address_and_per_meeting(appliance: Appliance) -> None:
    m = new_meeting(appliance, allow_guests=True, password="board meeting 7")
    for _ in range(3):
        assert guest(appliance, m["code"], "198.51.100.5", "guess").status_code == 404
    r = guest(appliance, m["code"], "198.51.100.5", "board meeting 7")
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests" and "retry-after" in r.headers
    # spread over addresses, the meeting's own limit (5) stops the guessing for everyone
    for address in ("198.51.100.6", "198.51.100.7"):
        assert guest(appliance, m["code"], address, "guess").status_code == 404
    assert guest(appliance, m["code"], "198.51.100.8", "board meeting 7").status_code == 429
    rules = {e["detail"]["rule"] for e in audit(appliance, "security.lockout")}
    assert {"password_address", "password_meeting"} <= rules


async def test_the_signaling_join_password_shares_the_limits(appliance: Appliance) -> None:
    m = new_meeting(appliance, password="weekly sync 99")
    bob = login(appliance, *USERS["bob"], "198.51.100.9").json()["access_token"]
    c = Participant(appliance.url, bob, headers=sender("198.51.100.9"))  # behind the trusted proxy
    await c.connect()
    try:
        codes = [(await c.join(m["code"], "Bob", password="guess"))["code"] for _ in range(3)]
        assert codes == ["wrong_password"] * 3
        locked = await c.join(m["code"], "Bob", password="weekly sync 99")
        assert locked["type"] == "error" and locked["code"] == "too_many_requests" and locked["retry_after"] >= 1
        assert c.closed_with is None  # the socket stays open
    finally:
        await c.close()


def test_meeting_passwords_have_a_minimum_length(appliance: Appliance) -> None:
    token = login(appliance, *USERS["ada"], "198.51.100.10").json()["access_token"]
    r = httpx.post(f"{appliance.url}/api/v1/meetings", json={"title": "x", "password": "1234"}, headers=bearer(token))
    assert r.status_code == 422 and r.json()["error"]["field"] == "password"
    m = httpx.post(f"{appliance.url}/api/v1/meetings", json={"title": "x"}, headers=bearer(token)).json()
    r = httpx.patch(f"{appliance.url}/api/v1/meetings/{m['id']}", json={"password": "a"}, headers=bearer(token))
    assert r.status_code == 422 and r.json()["error"]["field"] == "password"


def test_guest_passes_per_address_are_limited(appliance: Appliance) -> None:
    m = new_meeting(appliance, allow_guests=True)
    for i in range(3):
        assert guest(appliance, m["code"], "198.51.100.11", name=f"Guest {i}").status_code == 200
    r = guest(appliance, m["code"], "198.51.100.11", name="Guest 4")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert guest(appliance, m["code"], "198.51.100.12").status_code == 200


# ---------------------------------------------------------------------------- finding 4: sessions
async def joined(app: Appliance, token: str, meeting: dict, name: str) -> Participant:
    c = Participant(app.url, token)
    await c.connect()
    assert (await c.join(meeting["code"], name))["type"] == "joined"
    return c


async def closed(c: Participant, timeout: float = 5.0) -> int | None:
    await c.wait_until(lambda: c.closed_with is not None, timeout)
    return c.closed_with


async def test_logout_and_disabling_close_open_websockets(appliance: Appliance) -> None:
    m = new_meeting(appliance)
    host = await joined(appliance, login(appliance, *USERS["ada"], "198.51.100.20").json()["access_token"], m, "Ada")
    cat_tokens = login(appliance, *USERS["cat"], "198.51.100.20").json()
    cat = await joined(appliance, cat_tokens["access_token"], m, "Cat")
    bob_email = "leaver@example.com"
    admin_token = login(appliance, *ADMIN, "198.51.100.20").json()["access_token"]
    created = httpx.post(f"{appliance.url}/api/v1/users", json={"email": bob_email, "password": "leaver password"},
                         headers=bearer(admin_token)).json()
    leaver = await joined(appliance, login(appliance, bob_email, "leaver password", "198.51.100.20").json()["access_token"],
                          m, "Leaver")
    try:
        assert httpx.post(f"{appliance.url}/api/v1/auth/logout", headers=bearer(cat_tokens["access_token"])).status_code == 204
        assert await closed(cat, 2) == 4001
        assert cat.events_of("error")[-1]["code"] == "unauthorized"
        r = httpx.patch(f"{appliance.url}/api/v1/users/{created['id']}", json={"active": False}, headers=bearer(admin_token))
        assert r.status_code == 200
        assert await closed(leaver, 2) == 4001
        await host.wait_until(lambda: len(host.events_of("participant_left")) == 2)
        assert host.closed_with is None
        assert (await host.request({"type": "ping"}))["type"] == "pong"
    finally:
        for c in (host, cat, leaver):
            await c.close()


async def test_a_session_revoked_elsewhere_closes_its_websocket(appliance: Appliance) -> None:
    """Another process (here: the test, in the database) revokes the session: the periodic check
    (session_check_seconds=1) closes the connection."""
    m = new_meeting(appliance)
    tokens = login(appliance, *USERS["cat"], "198.51.100.21").json()
    cat = await joined(appliance, tokens["access_token"], m, "Cat")
    try:
        db = sqlite3.connect(appliance.data_dir / "confmeet.db")
        with db:
            sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
            db.execute("UPDATE auth_session SET revoked_at = CURRENT_TIMESTAMP WHERE id = ?", (sid,))
        db.close()
        assert await closed(cat, 5) == 4001
    finally:
        await cat.close()


# ---------------------------------------------------------------------------- finding 8
def refresh(app: Appliance, token: str) -> httpx.Response:
    return httpx.post(f"{app.url}/api/v1/auth/refresh", json={"refresh_token": token})


def test_a_reused_refresh_token_ends_the_whole_session(appliance: Appliance) -> None:
    first = login(appliance, *USERS["ada"], "198.51.100.30").json()
    second = refresh(appliance, first["refresh_token"]).json()
    # two tabs refreshing with the same token at once: both get the same successor
    again = refresh(appliance, first["refresh_token"])
    assert again.status_code == 200 and again.json()["refresh_token"] == second["refresh_token"]
    third = refresh(appliance, second["refresh_token"]).json()
    me = f"{appliance.url}/api/v1/users/me"
    assert httpx.get(me, headers=bearer(third["access_token"])).status_code == 200
    # the thief presents the first token (rotated twice since): the session ends for everyone
    stolen = refresh(appliance, first["refresh_token"])
    assert stolen.status_code == 401 and stolen.json()["error"]["code"] == "invalid_refresh_token"
    assert httpx.get(me, headers=bearer(third["access_token"])).status_code == 401
    assert refresh(appliance, third["refresh_token"]).status_code == 401
    assert audit(appliance, "session.refresh_reused")


def test_the_data_directory_is_private(appliance: Appliance) -> None:
    assert stat.S_IMODE(appliance.data_dir.stat().st_mode) == 0o700
    made = [p for p in appliance.data_dir.rglob("*") if p.name != "serve.log" and p.name != "confmeet.toml"]
    assert any(p.name == "confmeet.db" for p in made) and any(p.name == "documents.db" for p in made)
    loose = {str(p.relative_to(appliance.data_dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in made
             if stat.S_IMODE(p.stat().st_mode) & 0o077}
    assert not loose, loose


def test_security_headers(appliance: Appliance) -> None:
    for path in ("/", "/m/abc-defg-hij", "/api/v1/openapi.json", "/healthz"):
        r = httpx.get(f"{appliance.url}{path}")
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "default-src 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in r.headers  # plain HTTP here


def test_metrics_are_for_the_monitoring_server(appliance: Appliance) -> None:
    url = f"{appliance.url}/metrics"
    refused = httpx.get(url)  # loopback is not in metrics_addresses here
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert httpx.get(url, headers=bearer("wrong")).status_code == 403
    assert httpx.get(url, headers=bearer("scrape-token-0123456789")).status_code == 200
    assert httpx.get(url, headers=sender("192.0.2.250")).status_code == 200  # through the trusted proxy


async def test_turn_credentials_are_per_join_and_short_lived(appliance: Appliance) -> None:
    m = new_meeting(appliance)
    ada = await joined(appliance, login(appliance, *USERS["ada"], "198.51.100.31").json()["access_token"], m, "Ada")
    try:
        turn = next(s for s in ada.joined["ice_servers"] if s["urls"][0].startswith("turn:"))
        expiry, user = turn["username"].split(":", 1)
        assert user == ada.joined["participant"]["id"]  # this seat's, not the account's
        assert 0 < int(expiry) - time.time() <= 5 * 60 + 2
    finally:
        await ada.close()


# ---------------------------------------------------------------------------- finding 2: setup
def setup_link(app: Appliance) -> str:
    path = app.data_dir / "setup-link"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip().split("#setup=")[1]
    assert token not in app.output()  # never in the log
    return token


def setup(app: Appliance, token: str, email: str) -> httpx.Response:
    return httpx.post(f"{app.url}/api/v1/setup", json={"token": token, "email": email, "password": "first admin pw"})


def test_setup_refuses_once_an_administrator_exists(tmp_path: Path) -> None:
    app = start_appliance(tmp_path)
    try:
        token = setup_link(app)
        app.add_user("ops@example.com", "ops password 1", admin=True)  # the operator used the CLI instead
        r = setup(app, token, "intruder@example.com")
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        assert not (app.data_dir / "setup-link").exists()
        assert httpx.post(f"{app.url}/api/v1/auth/login",
                          json={"email": "intruder@example.com", "password": "first admin pw"}).status_code == 401
    finally:
        stop(app.proc)


def test_concurrent_setups_make_one_administrator(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, public_url="https://meet.example")  # served over TLS by a proxy: HSTS
    try:
        token = setup_link(app)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: setup(app, token, f"first{i}@example.com"), range(4)))
        assert sorted(r.status_code for r in answers) == [201, 409, 409, 409], [r.text for r in answers]
        assert httpx.get(f"{app.url}/healthz").headers["strict-transport-security"].startswith("max-age=")
    finally:
        stop(app.proc)


def test_the_setup_link_expires(tmp_path: Path) -> None:
    app = start_appliance(tmp_path, setup_link_seconds="2")
    try:
        token = setup_link(app)
        time.sleep(2.2)
        r = setup(app, token, "late@example.com")
        assert r.status_code == 403 and "expired" in r.json()["error"]["message"]
        assert not (app.data_dir / "setup-link").exists()
    finally:
        stop(app.proc)
