"""The roles someone has in a meeting, declared once, and what each may do."""

from __future__ import annotations

HOST = "host"
MODERATOR = "moderator"
PARTICIPANT = "participant"
GUEST = "guest"
ROLES = (HOST, MODERATOR, PARTICIPANT, GUEST)
# Those who run a meeting: the lobby, moderation, captions and recording.
MODERATORS = (HOST, MODERATOR)


def moderates(role: str | None) -> bool:
    return role in MODERATORS
