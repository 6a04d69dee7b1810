"""Request and response bodies of the REST API (they also make its OpenAPI document)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from ..accounts import AccountRole, Email, NewUser, Password, UserName, nonblank
from ..audit import ACTIONS
from ..display_names import name_problem
from ..roles import ROLES


def _no_role_in_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Title = Annotated[str, Field(max_length=200), AfterValidator(nonblank)]
MIN_MEETING_PASSWORD = 8
MeetingPassword = Annotated[str, Field(min_length=MIN_MEETING_PASSWORD, max_length=128,
                                       description=f"at least {MIN_MEETING_PASSWORD} characters")]
PasswordAttempt = Annotated[str, Field(min_length=1, max_length=128)]  # what someone types to get in


def utc_text(value: dt.datetime) -> str:
    if value.tzinfo is None:  # the database keeps naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _naive_utc(value: dt.datetime) -> dt.datetime:
    if not 1970 <= value.year <= 9998:
        raise ValueError("must be between the years 1970 and 9998")
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


# A time sent to the API: ISO 8601, with an offset or taken as UTC; kept as naive UTC.
When = Annotated[dt.datetime, AfterValidator(_naive_utc)]
UtcDatetime = Annotated[dt.datetime, PlainSerializer(utc_text, return_type=str)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    class Body(BaseModel):
        code: str
        message: str
        field: str | None = None

    error: Body


class LoginRequest(Strict):
    email: Email
    password: Annotated[str, Field(min_length=1, max_length=256)]


class OidcCallback(BaseModel):
    """What an OpenID provider sends the browser back with (providers add their own fields, such
    as Keycloak's session_state: those are ignored)."""

    code: Annotated[str, Field(max_length=1024)] = ""  # Entra ID's run to about 1000
    state: Annotated[str, Field(max_length=256)] = ""
    iss: Annotated[str, Field(max_length=512)] | None = None
    error: Annotated[str, Field(max_length=128)] | None = None
    error_description: Annotated[str, Field(max_length=512)] | None = None


class SignInMethods(BaseModel):
    password: bool = Field(description="e-mail and password (local accounts, and the directory's when configured)")
    directory: bool = Field(description="passwords are also checked by an LDAP directory")
    oidc: str | None = Field(description="the OpenID provider's name for a 'Sign in with …' button (null: none); "
                                         "the button opens GET /api/v1/auth/oidc/start")


class RefreshRequest(Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="seconds until the access token expires")


class RegisterRequest(Strict):
    email: Email
    password: Password
    name: UserName | None = None


class SetupRequest(Strict):
    token: Annotated[str, Field(min_length=1, max_length=512)]
    email: Email
    password: Password
    name: UserName | None = None


class UserCreate(NewUser):
    pass


class UserPatch(Strict):
    name: UserName | None = None
    role: AccountRole | None = None
    active: bool | None = None


class User(BaseModel):
    id: str
    email: str
    name: str
    role: AccountRole
    active: bool
    created_at: UtcDatetime


class UserList(BaseModel):
    users: list[User]
    total: int


class Page(Strict):
    limit: Annotated[int, Field(ge=1, le=500)] = 100
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class MeetingCreate(Strict):
    title: Title
    starts_at: When | None = None
    password: MeetingPassword | None = None
    lobby: bool = False
    allow_guests: bool = False
    e2ee: bool = Field(False, description="end-to-end encrypted media: no recording, no live captions")


class MeetingPatch(Strict):
    title: Title | None = None
    starts_at: When | None = None
    password: MeetingPassword | None = Field(None, description="set a password; null leaves it unchanged")
    clear_password: bool = Field(False, description="remove the meeting's password")
    lobby: bool | None = None
    allow_guests: bool | None = None
    locked: bool | None = None
    e2ee: bool | None = Field(None, description="end-to-end encrypted media; changed only while nobody is in it")


MeetingRoleName = Literal[ROLES]


class Meeting(BaseModel):
    id: str
    code: str
    title: str
    owner_id: str
    starts_at: UtcDatetime | None
    has_password: bool
    lobby: bool
    allow_guests: bool
    locked: bool
    e2ee: bool = Field(description="end-to-end encrypted media: recording and live captions are off")
    status: Literal["scheduled", "live", "ended"]
    created_at: UtcDatetime
    ended_at: UtcDatetime | None
    join_url: str
    my_role: MeetingRoleName | None = Field(None, description="your role in this meeting, if any")


class MeetingList(BaseModel):
    meetings: list[Meeting]
    total: int


class AuditEvent(BaseModel):
    id: int
    at: UtcDatetime
    actor_id: str | None
    actor_name: str | None = Field(None, description="the actor's name now (null: no actor, or the account is gone)")
    meeting_id: str | None
    meeting_title: str | None = Field(None, description="the meeting's title (null: none, or it was deleted)")
    action: str
    detail: dict


class AuditList(BaseModel):
    events: list[AuditEvent]
    total: int
    actions: list[str] = Field(description="every action the log knows (appliance/audit.py), for a filter")


AuditAction = Literal[tuple(sorted(ACTIONS))]


class AuditFilter(Strict):
    meeting_id: Annotated[str, Field(max_length=64)] | None = None
    actor_id: Annotated[str, Field(max_length=64)] | None = None
    action: AuditAction | None = None
    since: When | None = Field(None, description="events at or after this time (ISO 8601; UTC unless it has an offset)")
    until: When | None = Field(None, description="events before this time")


class AuditQuery(AuditFilter, Page):
    pass


MAX_AUDIT_EXPORT = 10_000


class AuditExportQuery(AuditFilter):
    limit: Annotated[int, Field(ge=1, le=MAX_AUDIT_EXPORT)] = MAX_AUDIT_EXPORT


class UserInvite(Strict):
    email: Email
    name: UserName | None = None
    role: AccountRole = "member"


class PasswordLink(BaseModel):
    user: User
    url: str = Field(description="the one-time link (give it to the person): it sets the account's password once")
    expires_at: UtcDatetime


class SetPassword(Strict):
    token: Annotated[str, Field(min_length=1, max_length=512)]
    password: Password


class LiveSeat(BaseModel):
    id: str
    name: str
    role: str
    guest: bool


class MeetingInProgress(BaseModel):
    id: str
    code: str
    title: str
    owner_name: str
    participants: list[LiveSeat]


class MeetingsInProgress(BaseModel):
    meetings: list[MeetingInProgress]


class RecordingSummary(BaseModel):
    id: str
    meeting_id: str
    meeting_title: str
    status: str
    started_at: UtcDatetime
    duration_s: float
    size: int = Field(description="bytes of its track files")
    exports_size: int = Field(description="bytes of its composite exports")
    room: str | None = Field(None, description="the name of the breakout room recorded; null: the main room")


class StorageUse(BaseModel):
    recordings: int = Field(description="bytes of recordings' track files")
    exports: int = Field(description="bytes of composite exports")
    files: int = Field(description="bytes of files shared in meetings' chats")
    total: int


class RecordingsOverview(BaseModel):
    recordings: list[RecordingSummary]
    total: int
    storage: StorageUse


class ComponentHealth(BaseModel):
    component: str
    state: Literal["up", "degraded", "down", "n/a"]
    version: str
    ms: float | None
    detail: str
    serves: str = Field(description="the setting the component serves (empty: the appliance, the GPU)")


class SystemHealth(BaseModel):
    state: Literal["up", "degraded", "down"]
    components: list[ComponentHealth]


class LiveTrack(BaseModel):
    track_id: str
    kind: str
    source: str | None = None
    packets: int
    bytes: int


class SfuWorker(BaseModel):
    index: int
    pid: int


class LiveParticipant(BaseModel):
    id: str
    name: str
    role: str
    connected: bool
    connection_state: str | None
    audio_level_dbov: float | None = Field(None, description="mean microphone level over the last second; -127 is silence")
    published: list[LiveTrack]
    quality: dict | None = None
    sfu_worker: SfuWorker | None = Field(None, description="the SFU worker process the meeting's media is on")


class LiveMeeting(BaseModel):
    participants: list[LiveParticipant]


class GuestJoin(Strict):
    name: Annotated[str, Field(max_length=100), AfterValidator(nonblank), AfterValidator(_no_role_in_name)]
    password: PasswordAttempt | None = None


class MeetingRef(BaseModel):
    id: str
    code: str
    title: str


class GuestToken(BaseModel):
    guest_token: str = Field(description="use it like an access token, for this meeting only")
    expires_in: int
    meeting: MeetingRef


class UploadQuery(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=255)]


class SharedFile(BaseModel):
    id: str
    name: str
    size: int
    content_type: str
    uploader_name: str
    created_at: UtcDatetime


class SharedFileList(BaseModel):
    files: list[SharedFile]


class DownloadLink(BaseModel):
    url: str = Field(description="a link that works without a token, for expires_in seconds")
    expires_in: int


NodeName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                description="the new node's name (letters, digits, '.', '_', '-')")]


class JoinRequest(Strict):
    token: Annotated[str, Field(min_length=1, max_length=128, description="from `confmeet node invite` "
                                "(the part before the '.')")]
    node: NodeName


class JoinSettings(BaseModel):
    node: str
    settings: dict[str, object] = Field(description="the settings every node of the install shares: the "
                                        "secrets and the stores' URLs among them")
    ca_cert: str = Field(description="the install's private CA (PEM), or \"\" when the nodes' certificates "
                                     "come from elsewhere")
    ca_key: str = Field(description="its key (PEM), so that the new node's certificate is issued by the same CA")
