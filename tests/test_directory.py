"""Sign-in through an LDAP directory: a real OpenLDAP server (Debian's slapd) on loopback, over
StartTLS with a certificate from a CA made here, and the appliance as `confmeet serve`."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import ldap3
import pytest

from appliance.directory import Directory, DirectoryError
from appliance.machine.tls import generate_ca, issue_server_certificate
from appliance.settings import Settings
from appliance_server import Appliance, start_appliance
from conftest import free_port, stop, wait_port

SUFFIX = "dc=example,dc=org"
ROOT = (f"cn=admin,{SUFFIX}", "root-secret")
SERVICE = (f"cn=confmeet,{SUFFIX}", "service secret")
PEOPLE, GROUPS = f"ou=people,{SUFFIX}", f"ou=groups,{SUFFIX}"
ADMINS, USERS = f"cn=confmeet-admins,{GROUPS}", f"cn=confmeet-users,{GROUPS}"
LOCAL_ADMIN = ("admin@example.org", "local admin password")
# uid: (cn, mail, password, groups)
PEOPLE_ENTRIES = {
    "li.wei": ("李伟", "li.wei@example.org", "li wei's password", [USERS]),
    "ann": ("Ann Admin", "ann@example.org", "ann's password", [USERS, ADMINS]),
    "eve": ("Eve Outside", "eve@example.org", "eve's password", []),
    # The local administrator's e-mail, in the directory with another password: no takeover.
    "impostor": ("Im Postor", LOCAL_ADMIN[0], "impostor's password", [USERS, ADMINS]),
}


@dataclass(frozen=True)
class Slapd:
    url: str
    ldaps_url: str
    ca: Path
    other_ca: Path

    def admin(self) -> ldap3.Connection:
        connection = ldap3.Connection(ldap3.Server(self.url, tls=ldap3.Tls(ca_certs_file=str(self.ca))),
                                      *ROOT, auto_bind=ldap3.AUTO_BIND_TLS_BEFORE_BIND, raise_exceptions=True)
        return connection

    def settings(self, **changes: str) -> dict[str, str]:
        values = {"ldap_url": self.url, "ldap_ca_file": str(self.ca), "ldap_bind_dn": SERVICE[0],
                  "ldap_bind_password": SERVICE[1], "ldap_user_base": PEOPLE, "ldap_admin_group": ADMINS,
                  "ldap_allowed_group": USERS}
        return {**values, **changes}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    if shutil.which("slapd") is None:
        pytest.fail("slapd is missing: run 'make test-setup' (it installs Debian's slapd)")
    tmp = tmp_path_factory.mktemp("slapd")
    ca = generate_ca(tmp / "ca")
    server = issue_server_certificate(tmp / "server", ca, ["127.0.0.1"])
    other_ca = generate_ca(tmp / "other-ca")
    (tmp / "db").mkdir()
    (tmp / "slapd.conf").write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {tmp}/slapd.pid
TLSCACertificateFile {ca.cert}
TLSCertificateFile {server.cert}
TLSCertificateKeyFile {server.key}
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ROOT[0]}"
rootpw {ROOT[1]}
directory {tmp}/db
access to attrs=userPassword by anonymous auth by * none
access to * by * read
""")
    port, ldaps_port = free_port(), free_port()
    proc = subprocess.Popen(["slapd", "-d", "0", "-f", str(tmp / "slapd.conf"),
                             "-h", f"ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{ldaps_port}/"],
                            stdout=subprocess.DEVNULL, stderr=(tmp / "slapd.log").open("w"))
    wait_port(port, proc)
    found = Slapd(f"ldap://127.0.0.1:{port}", f"ldaps://127.0.0.1:{ldaps_port}", ca.cert, other_ca.cert)
    with found.admin() as admin:
        admin.add(SUFFIX, ["dcObject", "organization"], {"o": "Example", "dc": "example"})
        admin.add(PEOPLE, ["organizationalUnit"], {"ou": "people"})
        admin.add(GROUPS, ["organizationalUnit"], {"ou": "groups"})
        admin.add(SERVICE[0], ["organizationalRole", "simpleSecurityObject"], {"userPassword": SERVICE[1]})
        for uid, (cn, mail, password, _) in PEOPLE_ENTRIES.items():
            admin.add(f"uid={uid},{PEOPLE}", ["inetOrgPerson"],
                      {"cn": cn, "sn": cn.split()[-1], "mail": mail, "userPassword": password})
        for group in (ADMINS, USERS):
            members = [f"uid={uid},{PEOPLE}" for uid, entry in PEOPLE_ENTRIES.items() if group in entry[3]]
            admin.add(group, ["groupOfNames"], {"member": members})
    yield found
    stop(proc)


@pytest.fixture(scope="module")
def appliance(slapd: Slapd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    app = start_appliance(tmp_path_factory.mktemp("appliance"), **slapd.settings())
    app.add_user(*LOCAL_ADMIN, admin=True)
    yield app
    stop(app.proc)


def sign_in(app: Appliance, email: str, password: str) -> httpx.Response:
    return httpx.post(f"{app.url}/api/v1/auth/login", json={"email": email, "password": password})


def as_user(app: Appliance, response: httpx.Response) -> httpx.Client:
    assert response.status_code == 200, response.text
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {response.json()['access_token']}"})


def test_directory_users_sign_in_with_the_directorys_password_and_its_groups_decide(
        appliance: Appliance, slapd: Slapd) -> None:
    li = as_user(appliance, sign_in(appliance, "li.wei@example.org", "li wei's password"))
    me = li.get("/api/v1/users/me").json()
    assert (me["email"], me["name"], me["role"]) == ("li.wei@example.org", "李伟", "member")
    assert li.get("/api/v1/users").status_code == 403
    ann = as_user(appliance, sign_in(appliance, "ann@example.org", "ann's password"))
    assert ann.get("/api/v1/users/me").json()["role"] == "admin"
    assert ann.get("/api/v1/users").status_code == 200  # an administrator by the directory's group

    for email, password in (("li.wei@example.org", "wrong"), ("eve@example.org", "eve's password"),  # not allowed
                            ("nobody@example.org", "anything"), ("li.wei@example.org", "ann's password")):
        refused = sign_in(appliance, email, password)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_credentials", (email, refused.text)

    # The local administrator keeps their own password; the directory's entry with that e-mail
    # (and its admin group) gets nothing.
    assert sign_in(appliance, LOCAL_ADMIN[0], "impostor's password").status_code == 401
    local = as_user(appliance, sign_in(appliance, *LOCAL_ADMIN))

    # The directory decides at each sign-in: out of the admin group, a member at the next one.
    with slapd.admin() as admin:
        admin.modify(ADMINS, {"member": [(ldap3.MODIFY_DELETE, [f"uid=ann,{PEOPLE}"])]})
    try:
        assert as_user(appliance, sign_in(appliance, "ann@example.org", "ann's password")).get(
            "/api/v1/users/me").json()["role"] == "member"
    finally:
        with slapd.admin() as admin:
            admin.modify(ADMINS, {"member": [(ldap3.MODIFY_ADD, [f"uid=ann,{PEOPLE}"])]})

    # An administrator's "disabled" holds whatever the directory says.
    users = {u["email"]: u for u in local.get("/api/v1/users").json()["users"]}
    assert local.patch(f"/api/v1/users/{users['li.wei@example.org']['id']}", json={"active": False}).status_code == 200
    assert sign_in(appliance, "li.wei@example.org", "li wei's password").status_code == 401

    events = local.get("/api/v1/audit", params={"limit": 100}).json()["events"]
    created = [e["detail"] for e in events if e["action"] == "user.created" and e["detail"].get("source") == "directory"]
    assert sorted(d["email"] for d in created) == ["ann@example.org", "li.wei@example.org"]
    assert created[0]["dn"].endswith(PEOPLE)
    assert any(e["action"] == "user.updated" and e["detail"] == {"user_id": users["ann@example.org"]["id"],
                                                                 "source": "directory", "role": "member"}
               for e in events)


def test_a_directory_that_cannot_be_trusted_or_reached_is_an_error_that_names_the_fix(slapd: Slapd) -> None:
    settings = Settings(**{k: v for k, v in slapd.settings().items()})
    directory = Directory(settings, timeout=2)
    assert directory.authenticate("li.wei@example.org", "li wei's password") is not None
    assert directory.authenticate("li.wei@example.org", "") is None  # an unauthenticated bind is no sign-in
    assert "bound as cn=confmeet" in directory.check()
    for changes, expected in (({"ldap_ca_file": str(slapd.other_ca)}, "ldap_ca_file"),  # StartTLS, untrusted
                              ({"ldap_url": slapd.ldaps_url, "ldap_ca_file": str(slapd.other_ca)}, "ldap_ca_file"),
                              ({"ldap_url": f"ldap://127.0.0.1:{free_port()}"}, "cannot reach"),
                              ({"ldap_bind_password": "wrong"}, "ldap_bind_password")):
        broken = Directory(replace(settings, **changes), timeout=2)
        with pytest.raises(DirectoryError, match=expected):
            broken.authenticate("li.wei@example.org", "li wei's password")
    assert Directory(replace(settings, ldap_url=slapd.ldaps_url), timeout=2).authenticate(
        "li.wei@example.org", "li wei's password") is not None


def test_sign_in_says_the_directory_is_unavailable_and_doctor_names_the_fix(
        slapd: Slapd, tmp_path: Path) -> None:
    app = start_appliance(tmp_path / "appliance", **slapd.settings(ldap_bind_password="wrong"))
    try:
        refused = sign_in(app, "li.wei@example.org", "li wei's password")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "directory_unavailable"
        assert "ldap_bind_password" in refused.json()["error"]["message"]
        assert "directory sign-in unavailable" in app.log.read_text()
        doctor = app.cli("doctor", "--json")
        found = {f["check"]: f for f in json.loads(doctor.stdout)["checks"]}
        assert found["directory"]["status"] == "fail" and "ldap_bind_password" in found["directory"]["detail"]
    finally:
        stop(app.proc)
    good = start_appliance(tmp_path / "good", **slapd.settings())
    try:
        found = {f["check"]: f for f in json.loads(good.cli("doctor", "--json").stdout)["checks"]}
        assert found["directory"]["status"] == "pass", found["directory"]
    finally:
        stop(good.proc)
