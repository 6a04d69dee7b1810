"""Signing in with an OpenID provider (Keycloak, Azure AD / Entra ID, Authentik, Okta, Google...):
the authorization code flow with PKCE, the ID token verified with joserfc against the provider's
published keys.

``begin`` makes the provider's authorization URL and the flow's state (state, nonce, PKCE
verifier), which travels in a signed, short-lived, HttpOnly cookie: nothing is kept in the
appliance between the two legs, so any process may answer the callback. ``complete`` checks the
returned state against the cookie, exchanges the code (with the verifier and the client's secret),
verifies the ID token (signature by a key of the provider's JWKS, issuer, audience, authorized
party, expiry, nonce), takes the e-mail, name and groups from it or else from the userinfo
endpoint (whose subject must be the token's), and decides who may sign in: a verified e-mail,
in ``oidc_allowed_domains`` and ``oidc_allowed_groups`` when set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt as pyjwt
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .settings import Settings

CALLBACK_PATH = "/api/v1/auth/oidc/callback"
FLOW_COOKIE = "confmeet_oidc"
FLOW_SECONDS = 600  # from the sign-in button to the provider's answer
METADATA_SECONDS = 3600  # the discovery document and keys are fetched again after this
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 60  # clock difference tolerated between the provider and the appliance


class OidcUnavailable(Exception):
    """The provider cannot be asked (unreachable, a discovery document or keys that do not
    parse); the message says what to fix."""


class OidcRejected(Exception):
    """The sign-in is refused; ``code`` is what the web client is told, the message what the
    log is."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OidcUser:
    subject: str
    email: str
    name: str
    admin: bool | None  # in oidc_admin_group; None when none is set (the role is left as it is)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Oidc:
    def __init__(self, settings: Settings, secret_key: str, timeout: float = 10.0) -> None:
        self.settings = settings
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.redirect_uri = settings.base_url + CALLBACK_PATH
        # The flow cookie's key: derived, so that it signs nothing else the secret key signs.
        self._flow_key = hmac.new(secret_key.encode(), b"confmeet oidc flow", hashlib.sha256).digest()
        self._http = httpx.AsyncClient(timeout=timeout, verify=settings.oidc_ca_file or True, follow_redirects=False)
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0

    async def close(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ the provider
    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcUnavailable(f"cannot read the OpenID provider's {what} at {url}: {exc}; check oidc_issuer, "
                                  "the network, and oidc_ca_file for a private CA") from None
        if not isinstance(document, dict):
            raise OidcUnavailable(f"the OpenID provider's {what} at {url} is not a JSON object")
        return document

    async def metadata(self, refresh: bool = False) -> dict[str, Any]:
        if self._metadata is None or refresh or time.monotonic() - self._fetched_at > METADATA_SECONDS:
            url = f"{self.issuer}/.well-known/openid-configuration"
            document = await self._get_json(url, "discovery document")
            if document.get("issuer", "").rstrip("/") != self.issuer:
                raise OidcUnavailable(f"the discovery document at {url} names the issuer {document.get('issuer')!r}, "
                                      f"not {self.issuer!r}: set oidc_issuer to the provider's issuer exactly")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(document.get(name), str):
                    raise OidcUnavailable(f"the discovery document at {url} has no {name}")
            try:
                keys = KeySet.import_key_set(await self._get_json(document["jwks_uri"], "keys (JWKS)"))
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise OidcUnavailable(f"the OpenID provider's keys at {document['jwks_uri']} do not parse: {exc}") from None
            self._metadata, self._keys, self._fetched_at = document, keys, time.monotonic()
        return self._metadata

    # ------------------------------------------------------------------ the two legs
    async def begin(self) -> tuple[str, str]:
        """The provider's authorization URL to send the browser to, and the flow cookie's value."""
        metadata = await self.metadata()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # RFC 7636: 43 to 128 characters
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        query = urlencode({"response_type": "code", "client_id": self.settings.oidc_client_id,
                           "redirect_uri": self.redirect_uri, "scope": self.settings.oidc_scopes,
                           "state": state, "nonce": nonce, "code_challenge": challenge,
                           "code_challenge_method": "S256"})
        endpoint = metadata["authorization_endpoint"]
        cookie = pyjwt.encode({"state": state, "nonce": nonce, "verifier": verifier,
                               "exp": int(time.time()) + FLOW_SECONDS}, self._flow_key, algorithm="HS256")
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", cookie

    async def logout_url(self) -> str | None:
        """Where the browser ends its session at the provider too (OpenID Connect RP-Initiated
        Logout: the provider's ``end_session_endpoint``, which sends it back to ``base_url``/);
        None when the provider has none. No ID token is kept, so ``client_id`` says who asks."""
        endpoint = (await self.metadata()).get("end_session_endpoint")
        if not isinstance(endpoint, str):
            return None
        query = urlencode({"client_id": self.settings.oidc_client_id,
                           "post_logout_redirect_uri": self.settings.base_url + "/"})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def complete(self, query: dict[str, str], cookie: str | None) -> OidcUser:
        """The user the provider's answer (the callback's query) signs in."""
        if "error" in query:
            raise OidcRejected("oidc_cancelled" if query["error"] == "access_denied" else "oidc_error",
                               f"the OpenID provider answered {query['error']}: {query.get('error_description', '')}")
        try:
            flow = pyjwt.decode(cookie or "", self._flow_key, algorithms=["HS256"])
        except pyjwt.PyJWTError:
            raise OidcRejected("oidc_expired", "no sign-in under way in this browser, or it took over "
                               f"{FLOW_SECONDS // 60} minutes: start again") from None
        if not hmac.compare_digest(query.get("state", ""), flow["state"]):
            raise OidcRejected("oidc_error", "the provider's answer is for another sign-in (state differs)")
        if "iss" in query and query["iss"].rstrip("/") != self.issuer:  # RFC 9207: a mix-up
            raise OidcRejected("oidc_error", f"the answer names the issuer {query['iss']!r}, not {self.issuer!r}")
        metadata = await self.metadata()
        form = {"grant_type": "authorization_code", "code": query.get("code", ""), "redirect_uri": self.redirect_uri,
                "code_verifier": flow["verifier"]}
        auth = None
        if self.settings.oidc_client_secret:
            auth = (self.settings.oidc_client_id, self.settings.oidc_client_secret)
        else:
            form["client_id"] = self.settings.oidc_client_id
        try:
            response = await self._http.post(metadata["token_endpoint"], data=form, auth=auth)
        except httpx.HTTPError as exc:
            raise OidcUnavailable(f"the OpenID provider's token endpoint did not answer: {exc}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        answer = answer if isinstance(answer, dict) else {}
        if response.status_code != 200 or not isinstance(answer.get("id_token"), str):
            raise OidcRejected("oidc_error", f"the token endpoint refused the code ({response.status_code}): "
                               f"{answer.get('error', '')} {answer.get('error_description', '')}; check "
                               "oidc_client_id, oidc_client_secret and the redirect URI registered at the provider")
        claims = await self.verify_id_token(answer["id_token"], flow["nonce"])
        if not claims.get("email") and metadata.get("userinfo_endpoint") and answer.get("access_token"):
            claims = {**await self._userinfo(metadata["userinfo_endpoint"], answer["access_token"], claims["sub"]),
                      **claims}
        return self._user(claims)

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims, once joserfc has checked its signature against the provider's
        keys (fetched again once for a key it does not know: the provider rotated them) and its
        claims are the ones this sign-in expects; OidcRejected says what is wrong."""
        await self.metadata()
        try:
            try:
                token = jwt.decode(id_token, self._keys, algorithms=ALGORITHMS)
            except JoseError:
                await self.metadata(refresh=True)
                token = jwt.decode(id_token, self._keys, algorithms=ALGORITHMS)
            jwt.JWTClaimsRegistry(
                leeway=LEEWAY_SECONDS, iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.settings.oidc_client_id}, exp={"essential": True},
                iat={"essential": True}, sub={"essential": True}, nonce={"essential": True, "value": nonce},
            ).validate(token.claims)
        except JoseError as exc:
            raise OidcRejected("oidc_invalid_token", f"the ID token is not valid for this appliance: {exc}") from None
        claims = token.claims
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.settings.oidc_client_id:
            raise OidcRejected("oidc_invalid_token", f"the ID token names several audiences and its authorized party "
                               f"is {claims.get('azp')!r}, not {self.settings.oidc_client_id!r}")
        return dict(claims)

    async def _userinfo(self, url: str, access_token: str, subject: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Authorization": f"Bearer {access_token}"})
            response.raise_for_status()
            claims = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcUnavailable(f"the OpenID provider's userinfo endpoint failed: {exc}") from None
        if not isinstance(claims, dict) or claims.get("sub") != subject:  # OpenID Connect Core 5.3.2
            raise OidcRejected("oidc_invalid_token", "the userinfo answer is about another subject")
        return claims

    def _user(self, claims: dict[str, Any]) -> OidcUser:
        settings = self.settings
        email = str(claims.get("email") or "").strip().lower()
        if not email or claims.get("email_verified") is False:
            raise OidcRejected("oidc_no_email", f"the provider gave no verified e-mail for {claims['sub']!r}: an "
                               "account here is an e-mail address (ask for the 'email' scope)")
        domain = email.rpartition("@")[2]
        if settings.oidc_allowed_domains and domain not in {d.lower() for d in settings.oidc_allowed_domains}:
            raise OidcRejected("oidc_not_allowed", f"{email}: the domain {domain} is not in oidc_allowed_domains")
        groups = claims.get(settings.oidc_groups_claim) or []
        groups = {groups} if isinstance(groups, str) else {str(g) for g in groups}
        if settings.oidc_allowed_groups and not groups & set(settings.oidc_allowed_groups):
            raise OidcRejected("oidc_not_allowed", f"{email} is in none of oidc_allowed_groups")
        name = str(claims.get("name") or claims.get("preferred_username") or email.split("@", 1)[0])
        return OidcUser(subject=str(claims["sub"]), email=email, name=name[:200],
                        admin=(settings.oidc_admin_group in groups) if settings.oidc_admin_group else None)
