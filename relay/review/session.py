"""Logins to the review UI: encrypted session cookies and CSRF tokens.

The cookie is sealed with Fernet (aiohttp-session's EncryptedCookieStorage) under a
key kept in the database, so every Sluice process sharing it honours a login made
on another. It is ``HttpOnly``, ``SameSite=Strict`` and ``Secure`` unless
``[admin] secure_cookies`` says otherwise. Every form carries a synchronizer token
bound to the session (``csrf``), checked on every POST: SameSite alone is not a
defence older browsers honour.
"""

from __future__ import annotations

import hmac
import secrets

import asyncpg
from aiohttp import web
from aiohttp_session import Session, get_session
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from relay.store.db import translating

__all__ = ["COOKIE", "csrf_token", "session_key", "storage", "valid_csrf"]

COOKIE = "sluice_session"


@translating
async def session_key(pool: asyncpg.Pool) -> bytes:
    """The cookies' Fernet key: made once, then read by every process."""
    fresh = secrets.token_bytes(32)
    await pool.execute(
        "INSERT INTO ui_secret (name, value) VALUES ('session', $1) ON CONFLICT DO NOTHING",
        fresh,
    )
    key: bytes = await pool.fetchval("SELECT value FROM ui_secret WHERE name = 'session'")
    return bytes(key)


def storage(key: bytes, *, secure: bool, hours: float, path: str) -> EncryptedCookieStorage:
    return EncryptedCookieStorage(
        key,
        cookie_name=COOKIE,
        max_age=int(hours * 3600),
        path=path,
        secure=secure,
        httponly=True,
        samesite="Strict",
    )


def csrf_token(session: Session) -> str:
    """The session's form token, made on first use."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


async def valid_csrf(request: web.Request, form: object) -> bool:
    """Whether the form's ``csrf`` field is this session's token."""
    session = await get_session(request)
    expected = session.get("csrf")
    given = form.get("csrf") if hasattr(form, "get") else None
    return (
        isinstance(expected, str)
        and isinstance(given, str)
        and hmac.compare_digest(given.encode(), expected.encode())
    )
