"""Files shared in a meeting's chat: /api/v1/meetings/{id}/files, and signed download links."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator

from sanic import Request
from sanic.response import HTTPResponse, ResponseStream

from ..errors import Forbidden, Invalid, NotFound, TooLarge
from ..security import TokenError
from ..stores.relational import MeetingFile
from . import api
from .endpoint import Call
from .models import DownloadLink, SharedFile, SharedFileList, UploadQuery

LINK_TTL = dt.timedelta(minutes=10)
SAFE_NAME = re.compile(r"[^\w.\- ]+")


def size_text(size: int) -> str:
    """A byte count as people read it: 25 MiB, 195 KiB, 512 bytes."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def file_view(row: MeetingFile) -> dict:
    return {"id": row.id, "name": row.name, "size": row.size, "content_type": row.content_type,
            "uploader_name": row.uploader_name, "created_at": row.created_at}


async def _require_member(call: Call, meeting_id: str) -> None:
    if not await call.services.meetings.is_member(call.principal, meeting_id):
        raise Forbidden("only people in this meeting can share and fetch its files")


@api.route("POST", "/api/v1/meetings/{meeting_id}/files", summary="Share a file in the meeting's chat",
           tag="files", auth="guest", upload=True, query=UploadQuery, response=SharedFile, status=201,
           errors=(403,))
async def upload_file(call: Call, meeting_id: str) -> dict:
    """Send the file's bytes as the body (its type in Content-Type) and its name as `?name=`. It is
    kept in the object store and posted to the chat from your seat: only people in the meeting now
    can share files, and only people who belong to it can download them."""
    services = call.services
    await _require_member(call, meeting_id)
    if services.signaling.seat_of(meeting_id, call.principal.id) is None:
        raise Forbidden("join the meeting to share a file in its chat")
    limit = services.settings.max_upload_bytes
    request: Request = call.request
    file_id = uuid.uuid4().hex
    name = SAFE_NAME.sub("_", call.query.name).strip() or "file"
    key = f"meetings/{meeting_id}/files/{file_id}"
    received = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal received
        while (chunk := await request.stream.read()) is not None:
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"files are limited to {size_text(limit)}")
            yield chunk

    content_type = (request.headers.get("content-type") or "application/octet-stream")[:127]
    try:
        info = await services.stores.objects.put(key, body(), content_type=content_type)
    except BaseException:
        await services.stores.objects.delete(key)
        raise
    if info.size == 0:
        await services.stores.objects.delete(key)
        raise Invalid("the file is empty", "body")
    principal = call.principal
    seat = services.signaling.seat_of(meeting_id, principal.id)
    if seat is None:  # left, or was removed, while the file came in
        await services.stores.objects.delete(key)
        raise Forbidden("you are no longer in the meeting; the file was not shared")
    row = await services.db.run(lambda: MeetingFile.create(
        id=file_id, meeting=meeting_id, uploader=principal.id if principal.kind == "user" else None,
        uploader_name=seat.name, name=name, size=info.size, content_type=content_type, object_key=key))
    view = file_view(row)
    await services.chat.share_file(seat, {k: view[k] for k in ("id", "name", "size", "content_type")})
    return view


@api.route("GET", "/api/v1/meetings/{meeting_id}/files", summary="Files shared in the meeting",
           tag="files", auth="guest", response=SharedFileList, errors=(403,))
async def list_files(call: Call, meeting_id: str) -> dict:
    await _require_member(call, meeting_id)
    rows = await call.services.db.run(lambda: list(
        MeetingFile.select().where(MeetingFile.meeting == meeting_id).order_by(MeetingFile.created_at)))
    return {"files": [file_view(r) for r in rows]}


@api.route("GET", "/api/v1/meetings/{meeting_id}/files/{file_id}", summary="A signed, expiring download link",
           tag="files", auth="guest", response=DownloadLink, errors=(403,))
async def file_link(call: Call, meeting_id: str, file_id: str) -> dict:
    services = call.services
    await _require_member(call, meeting_id)
    row = await services.db.run(lambda: MeetingFile.get_or_none(MeetingFile.id == file_id, MeetingFile.meeting == meeting_id))
    if row is None:
        raise NotFound("file")
    token = services.accounts.issuer.issue("file", row.id, LINK_TTL, mid=meeting_id, by=call.principal.id)
    return {"url": f"{services.settings.base_url}/files/{token}", "expires_in": int(LINK_TTL.total_seconds())}


async def download(request: Request, token: str) -> HTTPResponse:
    """GET /files/<token>: the bytes of a shared file, for whoever holds a fresh signed link that
    was not given to someone removed from the meeting since."""
    services = request.app.ctx.services
    try:
        claims = services.accounts.issuer.verify(token, "file")
    except TokenError as exc:
        raise Forbidden(f"this download link is not valid ({exc}); ask for a new one") from None
    if await services.meetings.is_removed(claims.get("mid", ""), claims.get("by", "")):
        raise Forbidden("this download link was given to someone who has since been removed from the meeting")
    file_id = claims["sub"]
    row = await services.db.run(lambda: MeetingFile.get_or_none(MeetingFile.id == file_id))
    if row is None:
        raise NotFound("file")
    objects = services.stores.objects

    async def stream(response) -> None:
        async for chunk in objects.get(row.object_key):
            await response.write(chunk)

    disposition = f"attachment; filename=\"{row.name}\""
    return ResponseStream(stream, content_type=row.content_type,
                          headers={"Content-Disposition": disposition, "Content-Length": str(row.size),
                                   "X-Content-Type-Options": "nosniff"})
