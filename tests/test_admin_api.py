"""The administrators' endpoints against the real appliance: invitations and password resets by
one-time link, the overview of meetings, recordings and health, the audit log's filters and its
CSV export; each refused to members and to bad input."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from collections.abc import Iterator

import httpx
import pytest

from appliance_server import Appliance, start_appliance
from conftest import stop

ADMIN = ("root@example.com", "root password 1")
MEMBER = ("mem@example.com", "member password 1")


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("admin-api"))
    app.add_user(*ADMIN, admin=True)
    yield app
    stop(app.proc)
    assert "Traceback" not in app.output(), app.output()


def client(appliance: Appliance, email: str, password: str) -> httpx.Client:
    tokens = appliance.login(email, password)
    return httpx.Client(base_url=appliance.url, headers={"Authorization": f"Bearer {tokens['access_token']}"})


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> httpx.Client:
    return client(appliance, *ADMIN)


@pytest.fixture(scope="module")
def member(appliance: Appliance, admin: httpx.Client) -> httpx.Client:
    r = admin.post("/api/v1/users", json={"email": MEMBER[0], "password": MEMBER[1], "name": "Mem"})
    assert r.status_code == 201, r.text
    return client(appliance, *MEMBER)


def token_of(url: str) -> str:
    assert "/#set-password=" in url, url
    return url.split("#set-password=", 1)[1]


def login_status(appliance: Appliance, email: str, password: str) -> int:
    return httpx.post(f"{appliance.url}/api/v1/auth/login", json={"email": email, "password": password}).status_code


ADMIN_ONLY = [("POST", "/api/v1/users/invitations", {"email": "x@example.com"}),
              ("POST", "/api/v1/users/0123/password-reset", None),
              ("GET", "/api/v1/admin/meetings", None), ("GET", "/api/v1/admin/recordings", None),
              ("GET", "/api/v1/admin/health", None), ("GET", "/api/v1/audit/export.csv", None),
              ("GET", "/api/v1/audit?actor_id=x", None)]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
def test_members_and_strangers_are_refused(appliance: Appliance, member: httpx.Client, method: str, path: str,
                                           body: dict | None) -> None:
    r = member.request(method, path, json=body)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert httpx.request(method, f"{appliance.url}{path}", json=body).status_code == 401


def test_an_invitation_sets_a_password_once_and_signs_in(appliance: Appliance, admin: httpx.Client) -> None:
    r = admin.post("/api/v1/users/invitations", json={"email": "New@Example.com", "name": "Nia New", "role": "admin"})
    assert r.status_code == 201, r.text
    invited = r.json()
    assert invited["user"]["email"] == "new@example.com" and invited["user"]["role"] == "admin"
    expires = dt.datetime.fromisoformat(invited["expires_at"])
    assert dt.timedelta(days=6, hours=23) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=7)
    assert invited["url"].startswith(appliance.url + "/#set-password=")
    assert login_status(appliance, "new@example.com", "") == 422
    assert login_status(appliance, "new@example.com", "!unset") == 401  # no usable password before the link

    assert admin.post("/api/v1/users/invitations", json={"email": "new@example.com"}).status_code == 409
    set_password = f"{appliance.url}/api/v1/auth/set-password"
    r = httpx.post(set_password, json={"token": token_of(invited["url"]), "password": "short"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "password"
    r = httpx.post(set_password, json={"token": token_of(invited["url"]), "password": "nia password 1"})
    assert r.status_code == 200, r.text
    me = httpx.get(f"{appliance.url}/api/v1/users/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.json()["email"] == "new@example.com"
    assert login_status(appliance, "new@example.com", "nia password 1") == 200
    again = httpx.post(set_password, json={"token": token_of(invited["url"]), "password": "other password 1"})
    assert again.status_code == 403 and again.json()["error"]["code"] == "invalid_password_link"
    assert httpx.post(set_password, json={"token": "made-up", "password": "other password 1"}).status_code == 403

    actions = [e["action"] for e in admin.get("/api/v1/audit", params={"limit": 5}).json()["events"]]
    assert actions[:2] == ["user.password_set", "user.invited"]


def test_a_reset_ends_the_password_and_sessions_until_the_new_link_is_used(
        appliance: Appliance, admin: httpx.Client) -> None:
    r = admin.post("/api/v1/users", json={"email": "rex@example.com", "password": "rex password 1", "name": "Rex"})
    user = r.json()
    rex = client(appliance, "rex@example.com", "rex password 1")
    first = admin.post(f"/api/v1/users/{user['id']}/password-reset").json()
    second = admin.post(f"/api/v1/users/{user['id']}/password-reset")
    assert second.status_code == 201, second.text
    assert rex.get("/api/v1/users/me").status_code == 401  # the session ended
    assert login_status(appliance, "rex@example.com", "rex password 1") == 401
    set_password = f"{appliance.url}/api/v1/auth/set-password"
    stale = httpx.post(set_password, json={"token": token_of(first["url"]), "password": "rex password 2"})
    assert stale.status_code == 403  # replaced by the second link
    assert httpx.post(set_password, json={"token": token_of(second.json()["url"]),
                                          "password": "rex password 2"}).status_code == 200
    assert login_status(appliance, "rex@example.com", "rex password 2") == 200
    [event] = admin.get("/api/v1/audit", params={"action": "user.password_reset", "limit": 1}).json()["events"]
    assert event["detail"]["user_id"] == user["id"] and event["actor_name"] == "root"
    assert admin.post("/api/v1/users/nobody/password-reset").status_code == 404


def test_a_directory_or_oidc_account_cannot_be_reset_here(appliance: Appliance, admin: httpx.Client) -> None:
    appliance.add_user("ext@example.com", "ext password 1")
    with sqlite3.connect(appliance.data_dir / "confmeet.db") as conn:
        conn.execute("""UPDATE "user" SET password_hash = '!external' WHERE email = 'ext@example.com'""")
    [ext] = [u for u in admin.get("/api/v1/users").json()["users"] if u["email"] == "ext@example.com"]
    r = admin.post(f"/api/v1/users/{ext['id']}/password-reset")
    assert r.status_code == 409 and r.json()["error"]["code"] == "external_account"
    assert "directory" in r.json()["error"]["message"]


@pytest.mark.parametrize(("body", "field"), [({"email": "not an e-mail"}, "email"),
                                             ({"email": "a@example.com", "role": "owner"}, "role"),
                                             ({"email": "a@example.com", "password": "x"}, "password"),
                                             ({"email": "a@example.com", "name": "  "}, "name")])
def test_bad_invitations(admin: httpx.Client, body: dict, field: str) -> None:
    r = admin.post("/api/v1/users/invitations", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_audit_filters_and_names(admin: httpx.Client) -> None:
    meeting = admin.post("/api/v1/meetings", json={"title": "Filtered"}).json()
    admin.patch(f"/api/v1/meetings/{meeting['id']}", json={"title": "Filtered again"})
    me = admin.get("/api/v1/users/me").json()
    events = admin.get("/api/v1/audit", params={"meeting_id": meeting["id"]}).json()
    assert [e["action"] for e in events["events"]] == ["meeting.updated", "meeting.created"]
    assert {e["meeting_title"] for e in events["events"]} == {"Filtered again"}
    assert "user.invited" in events["actions"]
    by_actor = admin.get("/api/v1/audit", params={"actor_id": me["id"], "limit": 500}).json()["events"]
    assert by_actor and all(e["actor_id"] == me["id"] and e["actor_name"] == me["name"] for e in by_actor)
    at = dt.datetime.fromisoformat(events["events"][0]["at"])
    later = (at + dt.timedelta(seconds=1)).isoformat()
    assert admin.get("/api/v1/audit", params={"meeting_id": meeting["id"], "since": later}).json()["total"] == 0
    assert admin.get("/api/v1/audit", params={"meeting_id": meeting["id"], "until": later}).json()["total"] == 2
    assert admin.get("/api/v1/audit", params={"meeting_id": meeting["id"],
                                              "until": events["events"][-1]["at"]}).json()["total"] == 0


@pytest.mark.parametrize(("query", "field"), [({"since": "yesterday"}, "since"), ({"action": "user.eaten"}, "action"),
                                              ({"limit": "0"}, "limit"), ({"colour": "red"}, "colour")])
def test_bad_audit_filters(admin: httpx.Client, query: dict, field: str) -> None:
    for path in ("/api/v1/audit", "/api/v1/audit/export.csv"):
        r = admin.get(path, params=query)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field


def test_the_csv_export_is_filtered_bounded_audited_and_safe_in_a_spreadsheet(admin: httpx.Client) -> None:
    meeting = admin.post("/api/v1/meetings", json={"title": "=HYPERLINK(\"http://evil\")"}).json()
    admin.patch(f"/api/v1/meetings/{meeting['id']}", json={"title": "@SUM(1+1)"})
    r = admin.get("/api/v1/audit/export.csv", params={"meeting_id": meeting["id"]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row["action"] for row in rows] == ["meeting.updated", "meeting.created"]
    assert {row["meeting_title"] for row in rows} == {"'@SUM(1+1)"}
    assert all(row["meeting_id"] == meeting["id"] and row["actor_name"] == "root" for row in rows)
    assert json.loads(rows[1]["detail"])["title"] == "=HYPERLINK(\"http://evil\")"  # one JSON object: no formula
    one = admin.get("/api/v1/audit/export.csv", params={"limit": 1})
    assert len(list(csv.reader(io.StringIO(one.content.decode("utf-8-sig"))))) == 2
    assert admin.get("/api/v1/audit/export.csv", params={"limit": 10_001}).status_code == 422
    [exported] = admin.get("/api/v1/audit", params={"action": "audit.exported", "limit": 1}).json()["events"]
    assert exported["detail"] == {"filters": {"limit": 1}, "rows": 1}


def test_overview_of_meetings_recordings_and_health(admin: httpx.Client) -> None:
    assert admin.get("/api/v1/admin/meetings").json() == {"meetings": []}
    overview = admin.get("/api/v1/admin/recordings").json()
    assert overview["recordings"] == [] and overview["storage"]["total"] == 0
    health = admin.get("/api/v1/admin/health").json()
    components = {c["component"]: c for c in health["components"]}
    assert components["appliance"]["state"] == "up", components
    assert components["database (embedded sqlite)"]["state"] == "up"
    assert health["state"] in ("up", "degraded")
