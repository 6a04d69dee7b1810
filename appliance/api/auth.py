"""Signing in and out: /api/v1/auth/* and the one-time first-admin setup."""

from __future__ import annotations

import logging
from urllib.parse import quote

from sanic.response import HTTPResponse, redirect

from ..errors import Forbidden, NotFound, Unauthorized
from ..oidc import CALLBACK_PATH, FLOW_COOKIE, FLOW_SECONDS, OidcRejected, OidcUnavailable
from ..throttle import client_address
from . import api
from .endpoint import Call
from .models import (LoginRequest, OidcCallback, RefreshRequest, RegisterRequest, SetPassword, SetupRequest,
                     SignInMethods, TokenPair, User)
from .users import user_view

log = logging.getLogger("confmeet.api")


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


@api.route("POST", "/api/v1/auth/set-password", summary="Choose a password with a one-time link",
           tag="auth", auth=None, body=SetPassword, response=TokenPair, errors=(403, 429))
async def set_password(call: Call) -> TokenPair:
    """`token` is what follows `#set-password=` in the link an administrator made (an invitation
    or a password reset, valid 7 days, once). The password is set and the person signed in: the
    reply is a token pair, as from sign-in. A link that is unknown, used, replaced or expired gets
    403 (code `invalid_password_link`); wrong links are limited per address like sign-ins (429)."""
    services = call.services
    throttle, limits = services.throttle, services.throttle.limits
    attempt = ((limits.login_address, client_address(call.request)),)
    throttle.check(*attempt)
    try:
        tokens = await services.accounts.set_password(call.body.token, call.body.password)
    except Forbidden:
        await throttle.record(*attempt)
        raise
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


@api.route("GET", "/api/v1/auth/methods", summary="How people sign in here", tag="auth", auth=None,
           response=SignInMethods)
async def methods(call: Call) -> SignInMethods:
    settings = call.services.settings
    return SignInMethods(password=True, directory=bool(settings.ldap_url),
                         oidc=settings.oidc_name if call.services.oidc is not None else None)


def _to_page(fragment: str) -> HTTPResponse:
    """Back to the web client, with ``fragment`` for it to read (a fragment never reaches a
    server or a log); the flow cookie cleared."""
    return _redirect(f"/#{fragment}")


def _redirect(location: str, cookie: str | None = None, secure: bool = False) -> HTTPResponse:
    """A redirect that sets the flow cookie, or clears it when None."""
    response = redirect(location)
    response.add_cookie(FLOW_COOKIE, cookie or "", path=CALLBACK_PATH, httponly=True, samesite="Lax", secure=secure,
                        max_age=FLOW_SECONDS if cookie else 0)
    response.headers["Cache-Control"] = "no-store"
    return response


@api.route("GET", "/api/v1/auth/oidc/start", summary="Sign in with the OpenID provider (a browser navigation)",
           tag="auth", auth=None, status=302, errors=(404,))
async def oidc_start(call: Call) -> HTTPResponse:
    """Sends the browser to the provider, with a signed cookie holding this sign-in's state,
    nonce and PKCE verifier (10 minutes). If the provider cannot be asked, back to the web client
    with `#oidc_error=oidc_unavailable`."""
    oidc = call.services.oidc
    if oidc is None:
        raise NotFound("OpenID sign-in (oidc_issuer is not set)")
    try:
        url, cookie = await oidc.begin()
    except OidcUnavailable as exc:
        log.warning("OpenID sign-in unavailable: %s", exc)
        return _to_page("oidc_error=oidc_unavailable")
    return _redirect(url, cookie, secure=call.services.settings.base_url.startswith("https://"))


@api.route("GET", "/api/v1/auth/oidc/logout", summary="Sign out at the OpenID provider too (a browser navigation)",
           tag="auth", auth=None, status=302, errors=(404,))
async def oidc_logout(call: Call) -> HTTPResponse:
    """After `POST /auth/logout`, for a session that came from the provider: sends the browser to
    the provider's `end_session_endpoint` to end its session there as well (the provider then
    sends it back to the web client); straight back to the web client when the provider has no
    such endpoint or cannot be asked."""
    oidc = call.services.oidc
    if oidc is None:
        raise NotFound("OpenID sign-in (oidc_issuer is not set)")
    try:
        url = await oidc.logout_url()
    except OidcUnavailable as exc:
        log.warning("OpenID sign-out at the provider skipped: %s", exc)
        url = None
    return _redirect(url or "/")


@api.route("GET", CALLBACK_PATH, summary="Where the OpenID provider sends the browser back", tag="auth",
           auth=None, query=OidcCallback, status=302, errors=(404, 413))
async def oidc_callback(call: Call) -> HTTPResponse:
    """Signs the user in and sends the browser to the web client with `#oidc=<refresh token>`,
    which the client exchanges at once (`/auth/refresh`: refresh tokens rotate, and the one in the
    address, presented again once its successor was used, ends the session); or with `#oidc_error=<code>`: oidc_cancelled, oidc_expired,
    oidc_invalid_token, oidc_no_email, oidc_not_allowed, oidc_unavailable, oidc_error."""
    services = call.services
    if services.oidc is None:
        raise NotFound("OpenID sign-in (oidc_issuer is not set)")
    query = {key: value for key, value in call.query.model_dump().items() if value is not None}
    try:
        user = await services.oidc.complete(query, call.request.cookies.get(FLOW_COOKIE))
        tokens = await services.accounts.external_login(user.email, user.name, user.admin, "oidc",
                                                        {"subject": user.subject})
    except OidcRejected as exc:
        log.info("OpenID sign-in refused (%s): %s", exc.code, exc)
        return _to_page(f"oidc_error={exc.code}")
    except OidcUnavailable as exc:
        log.warning("OpenID sign-in unavailable: %s", exc)
        return _to_page("oidc_error=oidc_unavailable")
    except Unauthorized as exc:
        log.info("OpenID sign-in refused: %s", exc)
        return _to_page("oidc_error=oidc_not_allowed")
    return _to_page(f"oidc={quote(tokens.refresh_token, safe='')}")
