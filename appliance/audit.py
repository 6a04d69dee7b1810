"""The audit log, written through one function with one vocabulary of actions.

``record`` writes one event; call it inside the database work it records (on the database pool),
so that the event and the change commit together. Read with ``GET /api/v1/audit``.
"""

from __future__ import annotations

from typing import Any

from .stores.relational import AuditEvent

ACTIONS = frozenset({
    "user.created", "user.updated", "user.invited", "user.password_reset", "user.password_set",
    "session.refresh_reused", "security.lockout", "audit.exported",
    "meeting.created", "meeting.updated", "meeting.ended", "meeting.deleted",
    "moderation.admit", "moderation.deny", "moderation.set_role", "moderation.lock", "moderation.unlock",
    "moderation.mute", "moderation.ask_unmute", "moderation.stop_camera", "moderation.remove",
    "moderation.captions_on", "moderation.captions_off",
    "recording.started", "recording.stopped", "recording.expired", "recording.deleted",
    # polls
    "poll.created", "poll.closed", "poll.published",
    # whiteboard
    "whiteboard.locked", "whiteboard.unlocked",
    # breakout rooms
    "breakout.created", "breakout.opened", "breakout.closed",
    # end-to-end encryption
    # several nodes: a machine that joined the install with a one-time token (confmeet node invite)
    "node.joined",
})


def record(action: str, actor: str | None = None, meeting: str | None = None, **detail: Any) -> None:
    """Write one audit event (blocking: run it on the database pool)."""
    if action not in ACTIONS:
        raise ValueError(f"{action!r} is not an audit action (appliance/audit.py ACTIONS)")
    AuditEvent.create(actor=actor, meeting=meeting, action=action, detail=detail)
