"""Signing in and out: /api/v1/auth/* and the one-time first-admin setup."""

from __future__ import annotations

from ..throttle import client_address
from . import api
from .endpoint import Call
from ..errors import Forbidden, Unauthorized
from .models import LoginRequest, RefreshRequest, RegisterRequest, SetupRequest, TokenPair, User
from .users import user_view


def _pair(tokens) -> TokenPair:
    return TokenPair(access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                     expires_in=tokens.expires_in)


@api.route("POST", "/api/v1/auth/login", summary="Sign in with e-mail and password", tag="auth",
           auth=None, body=LoginRequest, response=TokenPair, errors=(401, 429, 503))
async def login(call: Call) -> TokenPair:
    """Returns a short-lived access token and a refresh token. Send the access token as
    `Authorization: Bearer <token>`; when it expires, exchange the refresh token for a new pair.
    Too many failures for one account or from one address lock them out for a while (429 with
    `Retry-After`, doubling with each lockout)."""
    services = call.services
    throttle, limits = services.throttle, services.throttle.limits
    attempt = ((limits.login_account, call.body.email), (limits.login_address, client_address(call.request)))
    throttle.check(*attempt)
    try:
        tokens = await services.accounts.login(call.body.email, call.body.password)
    except Unauthorized:
        await throttle.record(*attempt)
        raise
    throttle.clear(limits.login_account, call.body.email)
    return _pair(tokens)


@api.route("POST", "/api/v1/auth/refresh", summary="Exchange a refresh token for a new token pair",
           tag="auth", auth=None, body=RefreshRequest, response=TokenPair, errors=(401,))
async def refresh(call: Call) -> TokenPair:
    """Refresh tokens rotate: each can be used once, and the reply carries its successor. A used
    one presented again (a stolen copy) ends the whole session."""
    return _pair(await call.services.accounts.refresh(call.body.refresh_token))


@api.route("POST", "/api/v1/auth/logout", summary="Sign out (revokes this session's tokens)",
           tag="auth", status=204)
async def logout(call: Call) -> None:
    await call.services.accounts.logout(call.principal)


@api.route("POST", "/api/v1/auth/register", summary="Create an account yourself (when allowed)",
           tag="auth", auth=None, body=RegisterRequest, response=User, status=201, errors=(403, 409))
async def register(call: Call) -> User:
    """Self-registration is off by default; an administrator turns it on with `allow_registration`."""
    if not call.services.settings.allow_registration:
        raise Forbidden("self-registration is turned off; ask an administrator for an account")
    body = call.body
    return user_view(await call.services.accounts.create_user(body.email, body.password, body.name))


@api.route("POST", "/api/v1/setup", summary="Create the first administrator with the one-time setup token",
           tag="auth", auth=None, body=SetupRequest, response=User, status=201, errors=(403, 409))
async def setup(call: Call) -> User:
    """Works once, on an appliance with no users, for `setup_link_seconds` after it started, with
    the token of the link it wrote to `DATA_DIR/setup-link`."""
    body = call.body
    user = await call.services.accounts.complete_setup(body.token, body.email, body.password, body.name)
    return user_view(user)
