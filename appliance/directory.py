"""Signing in through an LDAP directory (OpenLDAP, Active Directory, anything LDAPv3), with ldap3.

A user signs in with what the directory knows them by (``ldap_user_filter``, by default their
e-mail): the appliance finds their entry with its own account (or anonymously), then binds as
that entry with the password typed; only the directory ever checks it. Membership of
``ldap_admin_group`` makes an administrator, of ``ldap_allowed_group`` (when set) a user at all;
both are read at every sign-in, so a change in the directory takes effect at the next one.
Passwords never cross the network in clear: ``ldaps://``, or ``ldap://`` with StartTLS, and the
directory's certificate is verified (``ldap_ca_file``, or the system's CAs).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from .settings import Settings


class DirectoryError(Exception):
    """The directory could not be asked (unreachable, TLS, the appliance's own bind refused);
    the message says what to fix. Not a wrong password: that is ``authenticate`` returning None."""


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    email: str
    name: str
    admin: bool | None  # a member of ldap_admin_group; None when none is set (the role is left as it is)


class Directory:
    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        self.settings = settings
        self.timeout = max(1, round(timeout))  # ldap3 packs it into a socket option: whole seconds
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                        ca_certs_file=settings.ldap_ca_file or None)
        self.server = ldap3.Server(settings.ldap_url, use_ssl=settings.ldap_url.startswith("ldaps://"), tls=tls,
                                   connect_timeout=self.timeout, get_info=ldap3.NONE)

    # ------------------------------------------------------------------ connections
    def _bind(self, who: str | None, password: str | None) -> ldap3.Connection | None:
        """A connection bound as ``who`` (None: anonymous), or None when the directory refuses
        the credentials; DirectoryError when it cannot be reached or TLS fails."""
        connection = ldap3.Connection(self.server, user=who, password=password, receive_timeout=self.timeout,
                                      raise_exceptions=False, auto_bind=ldap3.AUTO_BIND_NONE,
                                      read_only=True)
        try:
            connection.open()
            if not self.server.ssl and self.settings.ldap_start_tls and not connection.start_tls():
                raise DirectoryError(f"StartTLS with {self.settings.ldap_url} failed: {connection.result}; "
                                     "turn TLS on in the directory, or use an ldaps:// URL")
            if connection.bind():
                return connection
        except LDAPException as exc:
            with contextlib.suppress(LDAPException, OSError):  # the socket may be gone already
                connection.unbind()
            raise DirectoryError(f"cannot reach the directory at {self.settings.ldap_url}: {exc}; check ldap_url, "
                                 "the firewall, and that ldap_ca_file holds the CA that signed its certificate") from exc
        connection.unbind()
        return None

    def _service(self) -> ldap3.Connection:
        settings = self.settings
        connection = self._bind(settings.ldap_bind_dn or None, settings.ldap_bind_password or None)
        if connection is None:
            raise DirectoryError(f"the directory refused the appliance's bind as {settings.ldap_bind_dn or 'anonymous'}: "
                                 "check ldap_bind_dn and ldap_bind_password")
        return connection

    # ------------------------------------------------------------------ signing in
    def authenticate(self, login: str, password: str) -> DirectoryUser | None:
        """The user ``login`` names, when ``password`` is theirs and they may sign in; None
        otherwise (unknown, ambiguous, wrong password, not in the allowed group). Blocking."""
        if not password:  # an empty password is an unauthenticated bind, which succeeds (RFC 4513 5.1.2)
            return None
        settings = self.settings
        service = self._service()
        try:
            service.search(settings.ldap_user_base, settings.ldap_user_filter.format(login=escape_filter_chars(login)),
                           attributes=[settings.ldap_email_attribute, settings.ldap_name_attribute], size_limit=2)
            entries = [e for e in service.response or [] if e.get("type") == "searchResEntry"]
            if len(entries) != 1:  # none, or two entries answer to it: nobody signs in as either
                return None
            dn, attributes = entries[0]["dn"], entries[0]["attributes"]
            user = self._bind(dn, password)
            if user is None:
                return None
            user.unbind()
            if settings.ldap_allowed_group and not self._member(service, settings.ldap_allowed_group, dn):
                return None
            admin = self._member(service, settings.ldap_admin_group, dn) if settings.ldap_admin_group else None
        finally:
            service.unbind()
        email = _first(attributes.get(settings.ldap_email_attribute)) or (login if "@" in login else "")
        if not email:
            return None  # an account here is an e-mail address
        name = _first(attributes.get(settings.ldap_name_attribute)) or email.split("@", 1)[0]
        return DirectoryUser(dn=dn, email=email.strip().lower(), name=name, admin=admin)

    def _member(self, service: ldap3.Connection, group: str, dn: str) -> bool:
        """Whether the group (groupOfNames, groupOfUniqueNames, an AD group) lists ``dn``."""
        escaped = escape_filter_chars(dn)
        service.search(group, f"(|(member={escaped})(uniqueMember={escaped}))", search_scope=ldap3.BASE,
                       attributes=[], size_limit=1)
        return any(e.get("type") == "searchResEntry" for e in service.response or [])

    # ------------------------------------------------------------------ doctor
    def check(self) -> str:
        """What ``confmeet doctor`` reports: the appliance binds and finds the user base and the
        groups. DirectoryError says what is wrong."""
        settings = self.settings
        service = self._service()
        try:
            for what, base in (("ldap_user_base", settings.ldap_user_base), ("ldap_admin_group", settings.ldap_admin_group),
                               ("ldap_allowed_group", settings.ldap_allowed_group)):
                if base and not service.search(base, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[]):
                    raise DirectoryError(f"{what} = {base!r} is not in the directory (or {settings.ldap_bind_dn or 'anonymous'} "
                                         f"may not read it): {service.result.get('description')}")
        finally:
            service.unbind()
        tls = "LDAPS" if self.server.ssl else "StartTLS" if settings.ldap_start_tls else "no TLS"
        return f"{settings.ldap_url} ({tls}): bound as {settings.ldap_bind_dn or 'anonymous'}, {settings.ldap_user_base} found"


def _first(value: object) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "")
