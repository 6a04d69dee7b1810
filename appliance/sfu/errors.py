"""Typed errors of the room host: each becomes one ``{"type": "error", ...}`` reply."""

from __future__ import annotations

from typing import Any


class SfuError(Exception):
    """A request the room host refuses; ``code`` is stable, ``message`` is for people.

    Codes: ``bad_message`` (a field is missing or has the wrong type), ``unknown_type``,
    ``unknown_participant``, ``already_joined``, ``invalid_sdp``, ``unsupported_codec``,
    ``invalid_state`` (e.g. an answer when no offer of the server waits), ``glare`` (an offer
    while the server's own offer waits for its answer), ``invalid_candidate``, ``closed``
    (the host is shutting down), ``unknown_sink``, ``already_running`` and ``not_running``
    (sink_start/sink_stop), ``unknown_track`` (video_layer), ``internal``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": self.message}
