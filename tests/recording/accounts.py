"""Accounts for the tests that start a real appliance."""

from __future__ import annotations

import httpx

from appliance_server import Appliance


def add_users(app: Appliance, users: dict[str, tuple[str, str]]) -> None:
    """The first an administrator (with the CLI), who makes the others' accounts (the API is faster)."""
    (email, password), *others = users.values()
    app.add_user(email, password, admin=True)
    token = app.login(email, password)["access_token"]
    for other, secret in others:
        r = httpx.post(f"{app.url}/api/v1/users", json={"email": other, "password": secret},
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
