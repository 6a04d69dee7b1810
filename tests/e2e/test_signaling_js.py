"""signaling.js, the browser's protocol client, in Chromium against the real appliance: replies by
id, typed errors, a refused join that can be retried, leave."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page

from appliance_server import Appliance

from .meeting_page import PEOPLE

pytestmark = pytest.mark.browser

# Runs `steps` (an async function body) with `Signaling`, the error classes and `token` in scope;
# returns what it returns.
RUN = """async ([steps, token]) => {
  const module = await import("/static/signaling.js");
  const body = new Function("module", "token", `const {Signaling, UserError, ProtocolError, ConnectionError} = module;
    return (async () => { ${steps} })();`);
  return body(module, token);
}"""


@pytest.fixture(scope="module")
def page(browser: Browser, appliance: Appliance) -> Iterator[Page]:
    # The test's own steps are evaluated from strings (new Function), which the appliance's
    # Content-Security-Policy forbids to the page itself: only this test's context is exempt.
    context = browser.new_context(base_url=appliance.url, bypass_csp=True)
    page = context.new_page()
    page.goto("/")
    yield page
    context.close()


@pytest.fixture(scope="module")
def grace_token(appliance: Appliance, host: httpx.Client) -> str:
    person = PEOPLE["grace"]
    r = httpx.post(f"{appliance.url}/api/v1/auth/login", json={"email": person.email, "password": person.password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def run(page: Page, steps: str, token: object) -> object:
    return page.evaluate(RUN, [steps, token])


def test_a_refused_join_is_a_user_error_and_can_be_retried(page: Page, host: httpx.Client, grace_token: str) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Locked room", "password": "open sesame"})
    assert r.status_code == 201, r.text
    meeting = r.json()
    result = run(page, f"""
        const client = new Signaling(async () => token);
        const refusals = [];
        for (const attempt of [{{meeting: "zzz-zzzz-zzz"}}, {{meeting: "{meeting['code']}", password: "wrong"}}]) {{
          try {{ await client.join({{...attempt, name: "Grace"}}); }}
          catch (e) {{ refusals.push([e.constructor.name, e.code, client.state]); }}
        }}
        const joined = await client.join({{meeting: "{meeting['code']}", name: "Grace", password: "open sesame"}});
        const pong = await client.request("ping");
        let closed = null;
        client.on("closed", ({{error}}) => {{ closed = error; }});
        await client.leave();
        return {{refusals, joined: joined.type, name: joined.participant.name, pong: pong.type,
                 state: client.state, closed}};
    """, grace_token)
    assert result == {"refusals": [["UserError", "not_found", "idle"], ["UserError", "wrong_password", "idle"]],
                      "joined": "joined", "name": "Grace", "pong": "pong", "state": "closed", "closed": None}


def test_a_forged_token_is_a_connection_error(page: Page) -> None:
    result = run(page, """
        const client = new Signaling(async () => token);
        try { await client.join({meeting: "abc-defg-hij"}); return "joined"; }
        catch (e) { return [e.constructor.name, e.code, e.message]; }
    """, "forged.token.value")
    assert result[:2] == ["ConnectionError", "unauthorized"]
    assert "Sign in" in result[2]


def test_a_second_join_on_one_client_is_refused(page: Page, host: httpx.Client, grace_token: str) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Open room"})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    result = run(page, f"""
        const client = new Signaling(async () => token);
        await client.join({{meeting: "{code}"}});
        try {{ await client.join({{meeting: "{code}"}}); return "joined twice"; }}
        catch (e) {{ return [e.constructor.name, e.code]; }}
        finally {{ await client.leave(); }}
    """, grace_token)
    assert result == ["ProtocolError", "already_joined"]


def test_a_lobby_join_waits_for_admission(page: Page, appliance: Appliance, host: httpx.Client,
                                          grace_token: str) -> None:
    r = host.post("/api/v1/meetings", json={"title": "Lobby room", "lobby": True})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    ada_token = host.headers["Authorization"].removeprefix("Bearer ")
    result = run(page, f"""
        const [adaToken, graceToken] = token;
        const ada = new Signaling(async () => adaToken);
        await ada.join({{meeting: "{code}"}});
        const knocks = [];
        ada.on("lobby", ({{waiting}}) => {{
          knocks.push(waiting.map((k) => k.name));
          if (waiting.length) ada.request("admit", {{knock_id: waiting[0].id}});
        }});
        const grace = new Signaling(async () => graceToken);
        let waited = null;
        grace.on("waiting", (m) => {{ waited = m.knock.name; }});
        const joined = await grace.join({{meeting: "{code}", name: "Grace in the lobby"}});
        await grace.leave();
        await ada.leave();
        return {{waited, joined: joined.type, name: joined.participant.name, knocks: knocks.slice(0, 2)}};
    """, [ada_token, grace_token])
    assert result == {"waited": "Grace in the lobby", "joined": "joined", "name": "Grace in the lobby",
                      "knocks": [["Grace in the lobby"], []]}
