"""Sign-in with an OpenID provider, end to end: a real provider (panva's oidc-provider, OpenID
Certified, on Node) on loopback, the appliance as `confmeet serve`, and Debian's Chromium clicking
through the provider's login and consent pages. The refusals are driven with httpx through the
same pages; a token the provider issued to another client is refused by its audience."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, expect

from appliance.oidc import CALLBACK_PATH, Oidc, OidcRejected
from appliance.settings import Settings
from appliance_server import CONFMEET, Appliance, start_appliance
from conftest import free_port, stop, wait_port

PROVIDER = Path(__file__).resolve().parent.parent / "oidc"
SECRET = "confmeet client secret"
OTHER = ("other-app", "other secret", "http://127.0.0.1:9/callback")  # another client of the same provider


@dataclass(frozen=True)
class Provider:
    url: str


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Appliance, Provider]]:
    if shutil.which("node") is None or not (PROVIDER / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("the test OpenID provider is missing: run 'make test-setup' (npm ci --prefix tests/oidc)")
    port = free_port()
    provider = Provider(f"http://127.0.0.1:{port}")
    app = start_appliance(tmp_path_factory.mktemp("oidc"), oidc_issuer=provider.url, oidc_client_id="confmeet",
                          oidc_client_secret=SECRET, oidc_name="Example SSO", oidc_scopes="openid email profile groups",
                          oidc_admin_group="confmeet-admins", oidc_allowed_domains="example.org")
    clients = [{"client_id": "confmeet", "client_secret": SECRET, "redirect_uris": [app.url + CALLBACK_PATH],
                "post_logout_redirect_uris": [app.url + "/"]},
               {"client_id": OTHER[0], "client_secret": OTHER[1], "redirect_uris": [OTHER[2]]}]
    log = (tmp_path_factory.mktemp("provider") / "provider.log").open("w")
    proc = subprocess.Popen(["node", "provider.mjs", str(port), json.dumps(clients)], cwd=PROVIDER,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        yield app, provider
    finally:
        stop(proc)
        stop(app.proc)


def through_the_provider(client: httpx.Client, response: httpx.Response, login: str, until: str) -> httpx.Response:
    """Follow redirects, filling the provider's login form with ``login`` and confirming its
    consent form, up to the redirect to a URL starting with ``until``."""
    for _ in range(12):
        if response.status_code in (302, 303) and response.headers["location"].startswith(until):
            return response
        if response.status_code in (302, 303):
            response = client.get(urljoin(str(response.url), response.headers["location"]))
        elif response.status_code == 200 and "<form" in response.text:
            action = re.search(r'<form[^>]*action="([^"]+)"', response.text).group(1)
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text))
            if 'name="login"' in response.text:
                fields.update(login=login, password="any")
            response = client.post(action, data=fields)
        else:
            raise AssertionError(f"{response.status_code} {response.text[:500]}")
    raise AssertionError("the provider never sent the browser back")


def sign_in_over_http(app: Appliance, login: str) -> str:
    """The fragment the appliance sends the browser back to the web client with."""
    with httpx.Client() as client:
        response = client.get(f"{app.url}/api/v1/auth/oidc/start")
        assert response.status_code == 302 and "confmeet_oidc" in response.cookies, response.text
        back = through_the_provider(client, response, login, app.url + CALLBACK_PATH)
        answer = client.get(back.headers["location"])
    assert answer.status_code == 302 and answer.headers["location"].startswith("/#"), answer.headers
    assert answer.headers["cache-control"] == "no-store"
    return answer.headers["location"][2:]


def test_doctor_reads_the_providers_discovery_and_keys(oidc: tuple[Appliance, Provider]) -> None:
    app, _ = oidc
    found = {f["check"]: f for f in json.loads(app.cli("doctor", "--json").stdout)["checks"]}
    assert found["OpenID provider"]["status"] == "pass", found["OpenID provider"]
    assert app.url + CALLBACK_PATH in found["OpenID provider"]["detail"]
    env = {**app.env, "CONFMEET_OIDC_ISSUER": f"http://127.0.0.1:{free_port()}"}
    broken = subprocess.run([*CONFMEET, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=60)
    found = {f["check"]: f for f in json.loads(broken.stdout)["checks"]}
    assert found["OpenID provider"]["status"] == "fail" and "oidc_issuer" in found["OpenID provider"]["fix"]


def test_people_sign_in_in_chromium_through_the_provider_and_its_groups_decide(
        oidc: tuple[Appliance, Provider], browser: Browser) -> None:
    app, _ = oidc
    for login, name, role in (("li.wei", "李伟", "member"), ("ann", "Ann Admin", "admin")):
        context = browser.new_context()
        page = context.new_page()
        page.goto(app.url)
        page.get_by_role("link", name="Sign in with Example SSO").click()
        page.get_by_placeholder("Enter any login").fill(login)
        page.get_by_placeholder("and password").fill("any")
        page.get_by_role("button", name="Sign-in").click()
        page.get_by_role("button", name="Continue").click()  # the provider's consent page
        expect(page.locator("#who-name")).to_have_text(name)
        assert page.url == app.url + "/"  # the token is out of the address and the history
        tokens = page.evaluate("JSON.parse(localStorage.getItem('confmeet.tokens'))")
        me = httpx.get(f"{app.url}/api/v1/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert (me.json()["email"], me.json()["role"]) == (f"{login}@example.org", role), me.text
        if login == "ann":
            page.screenshot(path=str(app.data_dir / "oidc-signed-in.png"))
        context.close()


def test_signing_out_ends_the_session_at_the_provider_too(oidc: tuple[Appliance, Provider], browser: Browser) -> None:
    app, _ = oidc
    context = browser.new_context()
    page = context.new_page()

    def sign_in(asked_to_log_in: bool) -> None:
        page.get_by_role("link", name="Sign in with Example SSO").click()
        if asked_to_log_in:
            page.get_by_placeholder("Enter any login").fill("li.wei")
            page.get_by_placeholder("and password").fill("any")
            page.get_by_role("button", name="Sign-in").click()
            page.get_by_role("button", name="Continue").click()
        expect(page.locator("#who-name")).to_have_text("李伟")

    page.goto(app.url)
    sign_in(asked_to_log_in=True)
    page.evaluate("localStorage.removeItem('confmeet.tokens')")  # signed out here only: the provider
    page.reload()                                                # still knows the browser
    sign_in(asked_to_log_in=False)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Yes, sign me out").click()  # the provider's own question
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.url == app.url + "/"
    sign_in(asked_to_log_in=True)  # the provider's session ended too
    context.close()


def test_refusals_come_back_to_the_sign_in_page_with_their_reason(
        oidc: tuple[Appliance, Provider], browser: Browser) -> None:
    app, _ = oidc
    assert sign_in_over_http(app, "eve") == "oidc_error=oidc_not_allowed"  # not in oidc_allowed_domains
    assert sign_in_over_http(app, "unverified") == "oidc_error=oidc_no_email"  # email_verified: false
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{app.url}/#oidc_error=oidc_not_allowed")
    expect(page.locator("#signin-form .error")).to_have_text("Your account may not sign in here: ask your administrator.")
    expect(page.get_by_role("link", name="Sign in with Example SSO")).to_be_visible()
    assert page.url == app.url + "/"
    page.screenshot(path=str(app.data_dir / "oidc-refused.png"))
    context.close()

    with httpx.Client() as client:  # cancelled at the provider; a callback without this browser's cookie
        start = client.get(f"{app.url}/api/v1/auth/oidc/start")
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        cancelled = client.get(f"{app.url}{CALLBACK_PATH}", params={"error": "access_denied", "state": state})
        assert cancelled.headers["location"] == "/#oidc_error=oidc_cancelled"
    stray = httpx.get(f"{app.url}{CALLBACK_PATH}", params={"code": "x", "state": state})
    assert stray.headers["location"] == "/#oidc_error=oidc_expired"

    # The refresh token in the address is exchanged by the client at once; presented again once
    # its successor was used (a copy from the history), it ends the session it began.
    fragment = sign_in_over_http(app, "li.wei")
    refresh_token = parse_qs(fragment)["oidc"][0]
    assert fragment == "oidc=" + quote(refresh_token, safe="")

    def refresh(token: str) -> httpx.Response:
        return httpx.post(f"{app.url}/api/v1/auth/refresh", json={"refresh_token": token})

    first = refresh(refresh_token)
    second = refresh(first.json()["refresh_token"])
    assert first.status_code == second.status_code == 200
    assert refresh(refresh_token).status_code == 401
    assert refresh(second.json()["refresh_token"]).status_code == 401  # the whole session ended


def test_an_id_token_for_another_client_a_forged_one_and_a_wrong_nonce_are_refused(
        oidc: tuple[Appliance, Provider]) -> None:
    _, provider = oidc
    with httpx.Client() as client:  # the provider signs a token in for OTHER
        verifier = "v" * 50
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        start = client.get(f"{provider.url}/auth", params={
            "response_type": "code", "client_id": OTHER[0], "redirect_uri": OTHER[2], "scope": "openid email",
            "state": "s", "nonce": "the nonce", "code_challenge": challenge, "code_challenge_method": "S256"})
        back = through_the_provider(client, start, "li.wei", OTHER[2])
        code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
        token = client.post(f"{provider.url}/token", auth=OTHER[:2], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": OTHER[2], "code_verifier": verifier})
        id_token = token.json()["id_token"]
    with ThreadPoolExecutor(1) as thread:  # its own event loop, in a thread of its own: Playwright's runs in this one
        thread.submit(asyncio.run, check_id_token(provider, id_token)).result()


async def check_id_token(provider: Provider, id_token: str) -> None:
    mine = Oidc(Settings(oidc_issuer=provider.url, oidc_client_id="confmeet", oidc_client_secret=SECRET), "key")
    theirs = Oidc(Settings(oidc_issuer=provider.url, oidc_client_id=OTHER[0], oidc_client_secret=OTHER[1]), "key")
    try:
        assert (await theirs.verify_id_token(id_token, "the nonce"))["sub"] == "li.wei"  # a good token...
        with pytest.raises(OidcRejected, match="aud") as refused:  # ...but not for this appliance
            await mine.verify_id_token(id_token, "the nonce")
        assert refused.value.code == "oidc_invalid_token"
        with pytest.raises(OidcRejected, match="nonce"):
            await theirs.verify_id_token(id_token, "another nonce")
        header, payload, signature = id_token.split(".")
        forged = ".".join((header, payload, signature[:-6] + ("AAAAAA" if not signature.endswith("AAAAAA") else "BBBBBB")))
        with pytest.raises(OidcRejected):
            await theirs.verify_id_token(forged, "the nonce")
    finally:
        await mine.close()
        await theirs.close()
