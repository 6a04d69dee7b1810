"""A machine joins an install of several nodes: /api/v1/cluster/join (docs/operations.md,
"Several nodes"). ``confmeet node invite`` on a node makes a one-time token; ``confmeet install
--join`` on the new machine presents it here over TLS (pinned to this node's certificate) and
gets what every node shares."""

from __future__ import annotations

from pathlib import Path

from .. import audit
from ..cluster import list_nodes, take_join_token
from ..errors import Conflict, Forbidden, NotFound
from ..settings import shared_settings
from ..throttle import client_address
from . import api
from .endpoint import Call
from .models import JoinRequest, JoinSettings


@api.route("POST", "/api/v1/cluster/join", summary="Hand a new node the settings the install's nodes share",
           tag="cluster", auth=None, body=JoinRequest, response=JoinSettings, errors=(403, 404, 409, 429))
async def join(call: Call) -> JoinSettings:
    """The token is one-time, from `confmeet node invite` (valid an hour); a wrong or used one gets
    403 (code `invalid_join_token`) and counts against the caller's address like a failed sign-in
    (429 past the limit). 404 when this appliance is one node (its bus is not Redis); 409 when a
    live node has the name asked for. The reply holds the install's secrets: `confmeet install
    --join` asks for it over TLS, checking this node's certificate against the fingerprint in the
    token."""
    services = call.services
    cluster = services.cluster
    if cluster is None:
        raise NotFound("cluster: this appliance is one node (its 'bus' is not Redis), so no machine can join it")
    throttle, limits = services.throttle, services.throttle.limits
    attempt = ((limits.login_address, client_address(call.request)),)
    throttle.check(*attempt)
    name = call.body.node
    if any(n.name == name and n.alive for n in await list_nodes(cluster.redis)):
        raise Conflict(f"a node named {name!r} is serving: give the new machine another name (--node-name)",
                       field="node")
    if not await take_join_token(cluster.redis, call.body.token):
        await throttle.record(*attempt)
        raise Forbidden("this join token is unknown, used or expired: make a new one with `confmeet node invite` "
                        "on a node of the install", code="invalid_join_token")
    settings = services.settings
    ca_cert, ca_key = "", ""
    if settings.tls_cert:  # the install's private CA, where the installer made one beside the certificate
        ca = Path(settings.tls_cert).parent
        if (ca / "ca.pem").is_file() and (ca / "ca.key").is_file():
            ca_cert, ca_key = (ca / "ca.pem").read_text(), (ca / "ca.key").read_text()
    await services.db.run(lambda: audit.record("node.joined", node=name, address=client_address(call.request)))
    return JoinSettings(node=name, settings=shared_settings(settings), ca_cert=ca_cert, ca_key=ca_key)
