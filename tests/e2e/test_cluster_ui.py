"""Several nodes with real Chromium on loopback: three ``confmeet serve`` sharing PostgreSQL, Redis
and their secrets. Two pages that open two different nodes' own addresses are in one meeting (at
least one of them relayed to the meeting's node) and see and hear each other. The gateway, each
node on its own address and a node killed: tests/e2e/test_cluster_netns.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from playwright.sync_api import Browser

from appliance_server import Appliance, serving_nodes

from .meeting_page import PEOPLE, MeetingPage, media_flows

pytestmark = pytest.mark.browser

BUS = "redis://127.0.0.1:6379/14"  # this module's own Redis database, emptied before and after


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Appliance]]:
    yield from serving_nodes(tmp_path_factory.mktemp("cluster-ui"), 3, BUS,
                             [(p.email, p.password) for p in PEOPLE.values()], media_loopback="true", sfu_workers="1")


def test_two_pages_on_two_nodes_are_in_one_meeting(browser: Browser, nodes: list[Appliance]) -> None:
    person = PEOPLE["ada"]
    token = httpx.post(f"{nodes[0].url}/api/v1/auth/login",
                       json={"email": person.email, "password": person.password}).json()["access_token"]
    r = httpx.post(f"{nodes[0].url}/api/v1/meetings", json={"title": "two doors"},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    meeting = r.json()
    ada = MeetingPage(browser, nodes[0].url, PEOPLE["ada"])
    grace = MeetingPage(browser, nodes[1].url, PEOPLE["grace"])
    try:
        ada.join(meeting["code"])
        grace.join(meeting["code"])
        owner = redis.Redis.from_url(BUS).get(f"confmeet:meeting:{meeting['id']}").decode()
        assert owner in ("n1", "n2", "n3")  # so at least one page is relayed
        media_flows(ada, grace)
        media_flows(grace, ada)
        assert not ada.errors and not grace.errors, ada.errors + grace.errors
    finally:
        ada.close()
        grace.close()
