"""The gateway: one public address in front of the nodes of an install (docs/architecture.md,
"Several nodes"). Nginx (Debian's package) passes HTTP and the signaling WebSocket to any live
node: a node relays a WebSocket to the node its meeting lives on, so the gateway needs no
knowledge of meetings, only of nodes. Media does not pass here: each node announces its own
addresses to clients. A node that refuses connections (stopped, dead) is skipped for the next
one, so a client reconnecting after a node died reaches a live node at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

FAIL_SECONDS = 5  # a node that failed is not tried again for this long


def nginx_config(nodes: Sequence[str], listen: str, prefix: Path | None = None, user: str | None = None,
                 max_body_mb: int = 26, tls_cert: str = "", tls_key: str = "") -> str:
    """An nginx.conf for the gateway: ``nodes`` as host:port, ``listen`` as nginx takes it
    (``443``, ``127.0.0.1:8443``). ``prefix``: a directory for nginx's own pid, logs and
    temporary files (a gateway run by hand or by a test; the Debian package's defaults otherwise)."""
    if not nodes:
        raise ValueError("the gateway needs at least one node")
    own = prefix is not None
    lines = [f"user {user};" if user else "", "worker_processes auto;",
             f"pid {prefix / 'nginx.pid'};" if own else "",
             f"error_log {prefix / 'error.log'} warn;" if own else "",
             "events { worker_connections 4096; }", "http {",
             f"  access_log {prefix / 'access.log'};" if own else "",
             *([f"  client_body_temp_path {prefix / 'body'};", f"  proxy_temp_path {prefix / 'proxy'};",
                f"  fastcgi_temp_path {prefix / 'fastcgi'};", f"  uwsgi_temp_path {prefix / 'uwsgi'};",
                f"  scgi_temp_path {prefix / 'scgi'};"] if own else []),
             "  map $http_upgrade $connection_upgrade { default upgrade; '' close; }",
             "  upstream confmeet_nodes {",
             *[f"    server {node} max_fails=1 fail_timeout={FAIL_SECONDS}s;" for node in nodes],
             "  }",
             "  server {",
             f"    listen {listen}{' ssl' if tls_cert else ''};",
             *([f"    ssl_certificate {tls_cert};", f"    ssl_certificate_key {tls_key};"] if tls_cert else []),
             f"    client_max_body_size {max_body_mb}m;",
             "    location / {",
             "      proxy_pass http://confmeet_nodes;",
             "      proxy_http_version 1.1;",
             "      proxy_set_header Upgrade $http_upgrade;",
             "      proxy_set_header Connection $connection_upgrade;",
             "      proxy_set_header Host $host;",
             "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
             "      proxy_set_header X-Forwarded-Proto $scheme;",
             "      proxy_connect_timeout 2s;",
             "      proxy_next_upstream error timeout;",
             "      proxy_read_timeout 120s;",  # the signaling ping is every 10 s
             "      proxy_request_buffering off;",
             "    }",
             "  }",
             "}"]
    return "\n".join(line for line in lines if line) + "\n"
