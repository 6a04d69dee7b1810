"""Users: /api/v1/users (administrators) and /api/v1/users/me."""

from __future__ import annotations

from .. import audit
from ..errors import Conflict, NotFound
from ..stores.relational import User as UserRow
from . import api
from .endpoint import Call
from .models import Page, PasswordLink, User, UserCreate, UserInvite, UserList, UserPatch


def user_view(user: UserRow) -> User:
    return User(id=user.id, email=user.email, name=user.name, role=user.role, active=user.active,
                created_at=user.created_at)


@api.route("GET", "/api/v1/users/me", summary="The signed-in user", tag="users", response=User)
async def me(call: Call) -> User:
    user = await call.services.db.run(UserRow.get_by_id, call.principal.id)
    return user_view(user)


@api.route("GET", "/api/v1/users", summary="List users", tag="users", auth="admin",
           query=Page, response=UserList)
async def list_users(call: Call) -> UserList:
    def page() -> UserList:
        query = UserRow.select().order_by(UserRow.created_at, UserRow.email)
        rows = query.limit(call.query.limit).offset(call.query.offset)
        return UserList(users=[user_view(u) for u in rows], total=query.count())

    return await call.services.db.run(page)


@api.route("POST", "/api/v1/users", summary="Create a user", tag="users", auth="admin",
           body=UserCreate, response=User, status=201, errors=(409,))
async def create_user(call: Call) -> User:
    body = call.body
    user = await call.services.accounts.create_user(
        body.email, body.password, body.name, body.role, actor=call.principal.id)
    return user_view(user)


@api.route("PATCH", "/api/v1/users/{user_id}", summary="Change a user's name, role, or disable them",
           tag="users", auth="admin", body=UserPatch, response=User, errors=(409,))
async def patch_user(call: Call, user_id: str) -> User:
    """`{"active": false}` disables an account: its sessions stop working at once."""
    changes = call.body.model_dump(exclude_none=True)
    actor = call.principal

    def patch() -> User:
        with call.services.db.atomic():
            user = UserRow.get_or_none(UserRow.id == user_id)
            if user is None:
                raise NotFound("user")
            if user.id == actor.id and (changes.get("active") is False or changes.get("role") == "member"):
                raise Conflict("you cannot disable or demote yourself; ask another administrator")
            for key, value in changes.items():
                setattr(user, key, value)
            user.save()
            audit.record("user.updated", actor.id, user_id=user.id, **changes)
            return user_view(user)

    user = await call.services.db.run(patch)
    await call.services.accounts.user_changed(user_id, user.active)
    return user


@api.route("POST", "/api/v1/users/invitations", summary="Invite someone: an account and a one-time link",
           tag="users", auth="admin", body=UserInvite, response=PasswordLink, status=201, errors=(409,))
async def invite_user(call: Call) -> PasswordLink:
    """The account is made without a password; give its owner the `url`: it lets them choose
    one, once, within 7 days (then they are signed in)."""
    body = call.body
    user, url, expires_at = await call.services.accounts.invite(
        body.email, body.name, body.role, call.principal.id, call.services.settings.base_url)
    return PasswordLink(user=user_view(user), url=url, expires_at=expires_at)


@api.route("POST", "/api/v1/users/{user_id}/password-reset", summary="Reset a password: a one-time link",
           tag="users", auth="admin", response=PasswordLink, status=201, errors=(409,))
async def reset_password(call: Call, user_id: str) -> PasswordLink:
    """The account's password stops working and its sessions end at once; give its owner the
    `url` to choose a new one (once, within 7 days; an earlier link of the account stops
    working). 409 (code `external_account`) for an account that signs in through the directory
    or the OpenID provider."""
    user, url, expires_at = await call.services.accounts.reset_password(
        user_id, call.principal.id, call.services.settings.base_url)
    return PasswordLink(user=user_view(user), url=url, expires_at=expires_at)
