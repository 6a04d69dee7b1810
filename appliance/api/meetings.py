"""Meetings: /api/v1/meetings."""

from __future__ import annotations

import datetime as dt

from sanic.response import HTTPResponse, json

from ..errors import Conflict, NotFound
from ..roles import HOST, MODERATORS
from ..stores.relational import MeetingFile, Recording
from ..throttle import client_address
from . import api
from .endpoint import Call
from .models import GuestJoin, GuestToken, LiveMeeting, Meeting, MeetingCreate, MeetingList, MeetingPatch, Page

GUEST_COOKIE = "confmeet_guest"  # a browser's signed guest id
GUEST_COOKIE_TTL = dt.timedelta(days=30)


@api.route("POST", "/api/v1/meetings", summary="Create a meeting", tag="meetings",
           body=MeetingCreate, response=Meeting, status=201, errors=(403,))
async def create_meeting(call: Call) -> dict:
    """You become its host. The reply carries the join `code` and `join_url` to share. With `e2ee`
    the media is end-to-end encrypted: the meeting cannot be recorded or captioned."""
    b = call.body
    return await call.services.meetings.create(
        call.principal, b.title, b.starts_at, b.password, b.lobby, b.allow_guests, b.e2ee)


@api.route("GET", "/api/v1/meetings", summary="Meetings you host or have a role in", tag="meetings",
           query=Page, response=MeetingList)
async def my_meetings(call: Call) -> dict:
    return await call.services.meetings.mine(call.principal, call.query.limit, call.query.offset)


@api.route("GET", "/api/v1/meetings/{meeting_id}", summary="A meeting by id", tag="meetings",
           auth="guest", response=Meeting)
async def get_meeting(call: Call, meeting_id: str) -> dict:
    return await call.services.meetings.get(call.principal, meeting_id=meeting_id)


@api.route("GET", "/api/v1/meetings/by-code/{code}", summary="A meeting by its join code",
           tag="meetings", auth="guest", response=Meeting)
async def get_meeting_by_code(call: Call, code: str) -> dict:
    return await call.services.meetings.get(call.principal, code=code.lower())


@api.route("PATCH", "/api/v1/meetings/{meeting_id}", summary="Change a meeting (host)", tag="meetings",
           body=MeetingPatch, response=Meeting, errors=(403, 409))
async def patch_meeting(call: Call, meeting_id: str) -> dict:
    """`e2ee` changes only while nobody is in the meeting (409, code `meeting_in_progress`): every
    client takes the meeting's encryption as it joins."""
    changes = call.body.model_dump(exclude_unset=True)
    if changes.get("e2ee") is not None and call.services.signaling.in_meeting(meeting_id):
        await call.services.meetings.require_role(call.principal, meeting_id, (HOST,))  # 403/404 first
        raise Conflict("end-to-end encryption can be turned on or off only while nobody is in the meeting",
                       field="e2ee", code="meeting_in_progress")
    return await call.services.meetings.update(call.principal, meeting_id, changes)


@api.route("DELETE", "/api/v1/meetings/{meeting_id}", summary="Delete a meeting (host)", tag="meetings",
           status=204, errors=(403,))
async def delete_meeting(call: Call, meeting_id: str) -> None:
    """Its recordings and the files shared in its chat go too, rows first, then the objects."""
    services = call.services

    def stored() -> tuple[list[Recording], list[str]]:
        return (list(Recording.select().where(Recording.meeting == meeting_id)),
                [f.object_key for f in MeetingFile.select(MeetingFile.object_key)
                 .where(MeetingFile.meeting == meeting_id)])

    recordings, file_keys = await services.db.run(stored)
    await services.meetings.delete(call.principal, meeting_id)  # 403/404 before anything goes
    for recording in recordings:
        await services.recordings.delete(recording)
    for key in file_keys:
        await services.stores.objects.delete(key)


@api.route("POST", "/api/v1/meetings/{meeting_id}/end", summary="End a meeting for everyone",
           tag="meetings", response=Meeting, errors=(403,))
async def end_meeting(call: Call, meeting_id: str) -> dict:
    """The host or a moderator ends it; everyone still in it is disconnected."""
    return await call.services.meetings.end(call.principal, meeting_id)


@api.route("GET", "/api/v1/meetings/{meeting_id}/live", summary="Who is in the meeting now, with media counters",
           tag="meetings", response=LiveMeeting, errors=(403,))
async def live_meeting(call: Call, meeting_id: str) -> dict:
    """For the host, moderators and administrators: each participant's connection state, microphone
    level and the packets of every track they publish."""
    services = call.services
    await services.meetings.require_role(call.principal, meeting_id, MODERATORS)
    return {"participants": await services.signaling.live(meeting_id)}


@api.route("POST", "/api/v1/meetings/by-code/{code}/guest", summary="Join as a guest (a name, no account)",
           tag="meetings", auth=None, body=GuestJoin, response=GuestToken, errors=(429,))
async def guest_token(call: Call, code: str) -> HTTPResponse:
    """Works when the meeting allows guests. A wrong password, a meeting without guests and an
    unknown code all get the same 404, so guests cannot probe which meetings exist. Wrong answers
    are limited per address and per meeting, and guest passes per address (429 with `Retry-After`).
    The reply sets a cookie that keeps this browser's guest id across passes: someone removed from
    the meeting stays removed with a new pass."""
    services = call.services
    code = code.lower()
    throttle, limits, address = services.throttle, services.throttle.limits, client_address(call.request)
    attempt = limits.meeting_password(address, code)
    throttle.check(*attempt, (limits.guest_tokens, address))
    try:
        meeting = await services.meetings.admit_guest(code, call.body.password)
    except NotFound:
        await throttle.record(*attempt)
        raise
    await throttle.record((limits.guest_tokens, address))
    guest_id, cookie = services.accounts.guest_id(call.request.cookies.get(GUEST_COOKIE), GUEST_COOKIE_TTL)
    tokens = services.accounts.guest_token(meeting["id"], call.body.name, guest_id)
    body = GuestToken(guest_token=tokens.access_token, expires_in=tokens.expires_in, meeting=meeting)
    response = json(body.model_dump(mode="json"))
    response.add_cookie(GUEST_COOKIE, cookie, path="/api/v1/meetings", httponly=True, samesite="Strict",
                        secure=services.settings.base_url.startswith("https:"), max_age=int(GUEST_COOKIE_TTL.total_seconds()))
    return response
