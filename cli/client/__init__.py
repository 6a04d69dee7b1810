"""A client of the appliance's own protocols, as a program meets them: ``api`` (REST), ``signaling``
(the WebSocket of docs/protocol.md), ``participant`` (a seat in a meeting with its peer connection),
``clips`` (media to send, encoded once) and ``received`` (what arrives, decoded or counted). The load
test, the tests and the benchmarks all use it.

This package itself stays light (the CLI imports it on every command); ``signaling``,
``participant``, ``clips`` and ``received`` import websockets, aiortc and PyAV.
"""

REQUEST_TIMEOUT = 15.0  # an HTTP or a signaling reply


class ClientError(Exception):
    """A problem the user of a client can act on (the appliance unreachable, a sign-in refused, no
    media path to it); its message says which, on one line."""
