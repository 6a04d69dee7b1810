"""The gateway: one public address in front of the nodes of an install (docs/architecture.md,
"Several nodes"). Nginx (Debian's package) passes HTTP and the signaling WebSocket to any live
node: a node relays a WebSocket to the node its meeting lives on, so the gateway needs no
knowledge of meetings, only of nodes. Media does not pass here: each node announces its own
addresses to clients. A node that refuses connections (stopped, dead) is skipped for the next
one, so a client reconnecting after a node died reaches a live node at once.

``confmeet install --gateway`` writes the site (``site_config``) into nginx's conf.d and runs
``confmeet node gateway --follow``, which rewrites it from the node registry as nodes come and go
and reloads nginx (cli/node.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..settings import host_port

FAIL_SECONDS = 5  # a node that failed is not tried again for this long
SITE_FILE = "etc/nginx/conf.d/confmeet-gateway.conf"  # under the install's root
# What may stand in an upstream line: registry data must not be able to write nginx directives.
ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5}$")


@dataclass(frozen=True)
class Upstream:
    """How the gateway reaches the nodes: over https, checking their certificates against ``ca``
    (empty: the system's CAs) for the name ``name`` every node's certificate carries."""

    ca: str = ""
    name: str = ""


def upstream(ca: str, public_host: str) -> Upstream:
    """Nodes that serve https for ``public_host``: nginx checks a certificate for a DNS name only,
    so for an install reached at an IP address it checks ``localhost``, which every certificate
    the installer's CA issues names too (the CA, not the name, is what tells a node here)."""
    try:
        ipaddress.ip_address(public_host.strip("[]"))
        return Upstream(ca, "localhost")
    except ValueError:
        return Upstream(ca, public_host)


def node_address(url: str) -> str:
    """HOST:PORT of a node's URL (as the registry holds it); ValueError when it is not one."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"node URL {url!r} has no valid port") from None
    address = host_port(parts.hostname or "", port)
    if parts.scheme not in ("http", "https") or not ADDRESS.match(address):
        raise ValueError(f"node URL {url!r} is not http(s)://HOST:PORT")
    return address


def site_config(nodes: Sequence[str], listen: str, max_body_mb: int = 26, tls_cert: str = "", tls_key: str = "",
                upstream: Upstream | None = None) -> str:
    """nginx's http-level configuration of the gateway (for conf.d): ``nodes`` as host:port,
    ``listen`` as nginx takes it (``443``, ``127.0.0.1:8443``); ``upstream``: the nodes serve https."""
    if not nodes:
        raise ValueError("the gateway needs at least one node")
    bad = [n for n in nodes if not ADDRESS.match(n)]
    if bad:
        raise ValueError(f"a node's address is host:port, not {', '.join(map(repr, bad))}")
    lines = ["map $http_upgrade $connection_upgrade { default upgrade; '' close; }",
             "upstream confmeet_nodes {",
             *[f"  server {node} max_fails=1 fail_timeout={FAIL_SECONDS}s;" for node in nodes],
             "}",
             "server {",
             f"  listen {listen}{' ssl' if tls_cert else ''};",
             *([f"  ssl_certificate {tls_cert};", f"  ssl_certificate_key {tls_key};"] if tls_cert else []),
             f"  client_max_body_size {max_body_mb}m;",
             "  location / {",
             f"    proxy_pass {'https' if upstream else 'http'}://confmeet_nodes;",
             *([*([f"    proxy_ssl_trusted_certificate {upstream.ca};"] if upstream.ca else []),
                "    proxy_ssl_verify on;",
                *([f"    proxy_ssl_name {upstream.name};"] if upstream.name else []),
                "    proxy_ssl_server_name on;"] if upstream else []),
             "    proxy_http_version 1.1;",
             "    proxy_set_header Upgrade $http_upgrade;",
             "    proxy_set_header Connection $connection_upgrade;",
             "    proxy_set_header Host $host;",
             "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
             "    proxy_set_header X-Forwarded-Proto $scheme;",
             "    proxy_connect_timeout 2s;",
             "    proxy_next_upstream error timeout;",
             "    proxy_read_timeout 120s;",  # the signaling ping is every 5 s
             "    proxy_request_buffering off;",
             "  }",
             "}"]
    return "\n".join(lines) + "\n"


def nginx_config(nodes: Sequence[str], listen: str, prefix: Path | None = None, user: str | None = None,
                 max_body_mb: int = 26, tls_cert: str = "", tls_key: str = "", upstream: Upstream | None = None) -> str:
    """A whole nginx.conf for the gateway: the site inside. ``prefix``: a directory for nginx's own
    pid, logs and temporary files (a gateway run by hand or by a test; the Debian package's
    defaults otherwise)."""
    site = site_config(nodes, listen, max_body_mb, tls_cert, tls_key, upstream)
    own = prefix is not None
    lines = [f"user {user};" if user else "", "worker_processes auto;",
             f"pid {prefix / 'nginx.pid'};" if own else "",
             f"error_log {prefix / 'error.log'} warn;" if own else "",
             "events { worker_connections 4096; }", "http {",
             f"  access_log {prefix / 'access.log'};" if own else "",
             *([f"  client_body_temp_path {prefix / 'body'};", f"  proxy_temp_path {prefix / 'proxy'};",
                f"  fastcgi_temp_path {prefix / 'fastcgi'};", f"  uwsgi_temp_path {prefix / 'uwsgi'};",
                f"  scgi_temp_path {prefix / 'scgi'};"] if own else []),
             *[f"  {line}" for line in site.splitlines()],
             "}"]
    return "\n".join(line for line in lines if line) + "\n"
