"""The REST API against the real appliance (a `confmeet serve` subprocess), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from appliance_server import Appliance, start_appliance
from conftest import drop_pg_database, make_pg_database, stop

ADMIN = ("admin@example.com", "correct horse battery")
MEMBER = ("member@example.com", "member password 1")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def appliance(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    data_dir = tmp_path_factory.mktemp(f"appliance-{request.param}")
    settings: dict[str, str] = {}
    pg_name = None
    if request.param == "postgresql":
        pg_name, settings["database"] = make_pg_database()
    app = start_appliance(data_dir, **settings)
    app.add_user(*ADMIN, admin=True)
    yield app
    stop(app.proc)
    if pg_name:
        drop_pg_database(pg_name)


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> httpx.Client:
    tokens = appliance.login(*ADMIN)
    return httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {tokens['access_token']}"})


@pytest.fixture(scope="module")
def member(appliance: Appliance, admin: httpx.Client) -> httpx.Client:
    r = admin.post("/api/v1/users", json={"email": MEMBER[0], "password": MEMBER[1], "name": "Mia Member"})
    assert r.status_code == 201, r.text
    tokens = appliance.login(*MEMBER)
    return httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {tokens['access_token']}"})


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    if field:
        assert error["field"] == field
    return error


# ---------------------------------------------------------------------------- operations
def test_health_and_readiness(appliance: Appliance) -> None:
    assert httpx.get(f"{appliance.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{appliance.url}/readyz").json()
    assert ready["status"] == "ready"
    assert set(ready["stores"]) == {"database", "bus", "documents", "objects"}
    assert all(store["ok"] for store in ready["stores"].values())


def test_metrics_count_requests_by_route(appliance: Appliance, admin: httpx.Client) -> None:
    admin.get("/api/v1/meetings/doesnotexist")
    text = httpx.get(f"{appliance.url}/metrics").text
    assert re.search(r'confmeet_http_requests_total\{method="GET",route="/api/v1/meetings/<meeting_id:str>",status="404"\} [1-9]', text)
    assert "confmeet_http_request_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text


def test_openapi_document_and_docs_page(appliance: Appliance) -> None:
    doc = httpx.get(f"{appliance.url}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/meetings/by-code/{code}" in doc["paths"]
    assert doc["paths"]["/api/v1/auth/login"]["post"]["responses"]["401"]
    page = httpx.get(f"{appliance.url}/api/docs")
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    assert httpx.get(f"{appliance.url}/api/docs/static/swagger-ui-bundle.js").status_code == 200


def test_web_client_is_served(appliance: Appliance) -> None:
    page = httpx.get(f"{appliance.url}/")
    assert page.status_code == 200 and "<title>confmeet</title>" in page.text
    assert httpx.get(f"{appliance.url}/static/home.js").status_code == 200


# ---------------------------------------------------------------------------- auth
def test_login_refresh_logout(appliance: Appliance) -> None:
    tokens = appliance.login(*ADMIN)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 15 * 60
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(f"{appliance.url}/api/v1/users/me", headers=headers).json()["email"] == ADMIN[0]

    r = httpx.post(f"{appliance.url}/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200
    renewed = r.json()
    assert renewed["refresh_token"] != tokens["refresh_token"]
    # a refresh token gives one successor: presented again at once (two tabs), the same one
    again = httpx.post(f"{appliance.url}/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 200 and again.json()["refresh_token"] == renewed["refresh_token"]

    new_headers = {"Authorization": f"Bearer {renewed['access_token']}"}
    assert httpx.post(f"{appliance.url}/api/v1/auth/logout", headers=new_headers).status_code == 204
    # logout ends the session: its access and refresh tokens stop working at once
    assert_error(httpx.get(f"{appliance.url}/api/v1/users/me", headers=new_headers), 401, "unauthorized")
    again = httpx.post(f"{appliance.url}/api/v1/auth/refresh", json={"refresh_token": renewed["refresh_token"]})
    assert_error(again, 401)


def test_wrong_password_and_unknown_user_look_the_same(appliance: Appliance) -> None:
    wrong = httpx.post(f"{appliance.url}/api/v1/auth/login", json={"email": ADMIN[0], "password": "nope"})
    unknown = httpx.post(f"{appliance.url}/api/v1/auth/login", json={"email": "x@example.com", "password": "nope"})
    assert_error(wrong, 401, "invalid_credentials")
    assert wrong.json() == unknown.json()


def test_missing_expired_forged_and_wrong_kind_tokens(appliance: Appliance) -> None:
    url = f"{appliance.url}/api/v1/users/me"
    assert_error(httpx.get(url), 401, "unauthorized")
    assert httpx.get(url).headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(url, headers={"Authorization": "Basic abc"}), 401)
    assert_error(httpx.get(url, headers={"Authorization": "Bearer not.a.jwt"}), 401)

    claims = jwt.decode(appliance.login(*ADMIN)["access_token"], options={"verify_signature": False})
    now = int(time.time())
    expired = jwt.encode({**claims, "iat": now - 3600, "exp": now - 60}, appliance.secret_key, "HS256")
    error = assert_error(httpx.get(url, headers={"Authorization": f"Bearer {expired}"}), 401)
    assert "expired" in error["message"]
    forged = jwt.encode({**claims, "role": "admin"}, "not-the-secret", "HS256")
    assert_error(httpx.get(url, headers={"Authorization": f"Bearer {forged}"}), 401)
    wrong_kind = jwt.encode({**claims, "typ": "file"}, appliance.secret_key, "HS256")  # a download link
    assert_error(httpx.get(url, headers={"Authorization": f"Bearer {wrong_kind}"}), 401)


def test_self_registration_is_off_by_default(appliance: Appliance) -> None:
    r = httpx.post(f"{appliance.url}/api/v1/auth/register",
                   json={"email": "new@example.com", "password": "long enough pw"})
    assert_error(r, 403, "forbidden")


def test_setup_is_closed_once_users_exist(appliance: Appliance) -> None:
    r = httpx.post(f"{appliance.url}/api/v1/setup",
                   json={"token": "guess", "email": "evil@example.com", "password": "long enough pw"})
    assert_error(r, 409, "conflict")


# ---------------------------------------------------------------------------- users
def test_admin_manages_users(appliance: Appliance, admin: httpx.Client, member: httpx.Client) -> None:
    listed = admin.get("/api/v1/users").json()
    emails = [u["email"] for u in listed["users"]]
    assert ADMIN[0] in emails and MEMBER[0] in emails and listed["total"] >= 2
    assert all("password" not in key for u in listed["users"] for key in u)

    assert_error(member.get("/api/v1/users"), 403, "forbidden")
    assert_error(member.post("/api/v1/users", json={"email": "z@example.com", "password": "12345678"}), 403)
    dup = admin.post("/api/v1/users", json={"email": MEMBER[0].upper(), "password": "another password"})
    assert_error(dup, 409, "conflict", "email")


def test_disabling_a_user_ends_their_sessions(appliance: Appliance, admin: httpx.Client) -> None:
    email, password = "leaver@example.com", "leaver password"
    created = admin.post("/api/v1/users", json={"email": email, "password": password}).json()
    headers = {"Authorization": f"Bearer {appliance.login(email, password)['access_token']}"}
    assert httpx.get(f"{appliance.url}/api/v1/users/me", headers=headers).status_code == 200

    r = admin.patch(f"/api/v1/users/{created['id']}", json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False
    assert_error(httpx.get(f"{appliance.url}/api/v1/users/me", headers=headers), 401)
    r = httpx.post(f"{appliance.url}/api/v1/auth/login", json={"email": email, "password": password})
    assert_error(r, 401, "invalid_credentials")
    assert_error(admin.patch("/api/v1/users/nosuchuser", json={"active": False}), 404, "not_found")


def test_admin_cannot_lock_themselves_out(admin: httpx.Client) -> None:
    me = admin.get("/api/v1/users/me").json()
    assert_error(admin.patch(f"/api/v1/users/{me['id']}", json={"active": False}), 409)


# ---------------------------------------------------------------------------- meetings
def test_meeting_lifecycle(appliance: Appliance, admin: httpx.Client, member: httpx.Client) -> None:
    r = member.post("/api/v1/meetings", json={"title": "Weekly sync", "starts_at": "2026-12-01T09:00:00+01:00",
                                              "password": "s3cret pass", "lobby": True})
    assert r.status_code == 201, r.text
    meeting = r.json()
    assert re.fullmatch(r"[a-z]{3}-[a-z]{4}-[a-z]{3}", meeting["code"])
    assert meeting["my_role"] == "host" and meeting["has_password"] and meeting["lobby"]
    assert meeting["starts_at"].startswith("2026-12-01T08:00:00")  # stored in UTC
    assert meeting["join_url"] == f"{appliance.url}/m/{meeting['code']}"
    assert "password" not in meeting and "password_hash" not in meeting

    by_id = admin.get(f"/api/v1/meetings/{meeting['id']}").json()
    by_code = admin.get(f"/api/v1/meetings/by-code/{meeting['code'].upper()}").json()
    assert by_id["id"] == by_code["id"] == meeting["id"] and by_id["my_role"] is None

    mine = member.get("/api/v1/meetings").json()
    assert meeting["id"] in [m["id"] for m in mine["meetings"]]
    assert meeting["id"] not in [m["id"] for m in admin.get("/api/v1/meetings").json()["meetings"]]

    # only the host (or an administrator) changes it
    other = httpx.Client(base_url=appliance.url, headers={
        "Authorization": f"Bearer {appliance.login(*ADMIN)['access_token']}"})
    patched = member.patch(f"/api/v1/meetings/{meeting['id']}", json={"title": "Renamed", "clear_password": True})
    assert patched.status_code == 200 and patched.json()["title"] == "Renamed"
    assert patched.json()["has_password"] is False
    ended = member.post(f"/api/v1/meetings/{meeting['id']}/end")
    assert ended.status_code == 200 and ended.json()["status"] == "ended" and ended.json()["ended_at"]
    assert other.delete(f"/api/v1/meetings/{meeting['id']}").status_code == 204  # admin may
    assert_error(member.get(f"/api/v1/meetings/{meeting['id']}"), 404, "not_found")

    audit = admin.get("/api/v1/audit", params={"action": "meeting.deleted"}).json()
    assert any(e["detail"]["meeting_id"] == meeting["id"] for e in audit["events"])


def test_non_host_cannot_change_a_meeting(admin: httpx.Client, member: httpx.Client) -> None:
    meeting = admin.post("/api/v1/meetings", json={"title": "Admins only"}).json()
    before = admin.get(f"/api/v1/meetings/{meeting['id']}").json()
    assert_error(member.patch(f"/api/v1/meetings/{meeting['id']}", json={"title": "Mine now"}), 403, "forbidden")
    assert_error(member.post(f"/api/v1/meetings/{meeting['id']}/end"), 403)
    assert_error(member.delete(f"/api/v1/meetings/{meeting['id']}"), 403)
    assert admin.get(f"/api/v1/meetings/{meeting['id']}").json() == before
    assert_error(member.get("/api/v1/audit"), 403)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("body, status, code, field", [
    (b"{not json", 400, "malformed_json", None),
    (b"", 400, "malformed_json", None),
    (b"[1, 2]", 422, "invalid", None),
    (b'{"title": 42}', 422, "invalid", "title"),
    (b'{"title": "   "}', 422, "invalid", "title"),
    (b'{"title": "' + b"x" * 201 + b'"}', 422, "invalid", "title"),
    (b'{"title": "ok", "lobby": "yes"}', 422, "invalid", "lobby"),
    (b'{"title": "ok", "starts_at": "tomorrow"}', 422, "invalid", "starts_at"),
    (b'{"title": "ok", "starts_at": "0001-01-01T00:00:00+01:00"}', 422, "invalid", "starts_at"),
    (b'{"title": "ok", "colour": "red"}', 422, "invalid", "colour"),
    (b'{}', 422, "invalid", "title"),
])
def test_bad_meeting_input(admin: httpx.Client, body: bytes, status: int, code: str, field: str | None) -> None:
    before = admin.get("/api/v1/meetings").json()["total"]
    r = admin.post("/api/v1/meetings", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, status, code, field)
    assert admin.get("/api/v1/meetings").json()["total"] == before  # nothing half-written


def test_oversized_body_is_refused(admin: httpx.Client) -> None:
    r = admin.post("/api/v1/meetings", content=b'{"title": "' + b"x" * 2_000_000 + b'"}',
                   headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_unknown_things(admin: httpx.Client) -> None:
    assert_error(admin.get("/api/v1/meetings/0000"), 404, "not_found")
    assert_error(admin.get("/api/v1/meetings/by-code/aaa-bbbb-ccc"), 404, "not_found")
    assert_error(admin.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(admin.put("/api/v1/meetings"), 405, "method_not_allowed")
    assert_error(admin.get("/api/v1/users", params={"limit": "many"}), 422, "invalid", "limit")
    assert_error(admin.get("/api/v1/users", params={"limit": "0"}), 422, "invalid", "limit")


def test_blank_query_values_are_refused(admin: httpx.Client) -> None:
    assert_error(admin.get("/api/v1/users?limit="), 422, "invalid", "limit")
    assert_error(admin.get("/api/v1/users", params={"sort": "name"}), 422, "invalid", "sort")
