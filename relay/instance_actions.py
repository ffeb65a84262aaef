"""Acting on the instance through its admin API: suspend an account, remove or purge a
post, file a report for its moderators. One class per server family, each spelling the
calls as that software's API documents them (the facts: review.md §6); the effects that
decide when to call them live in relay.effects.act.

Remote objects are named by their ActivityPub ids; the instance knows them by its own
ids, so each family first resolves a URI through the instance (Mastodon's search with
``resolve``, Lemmy's ``resolve_object``, Misskey's ``ap/show``). Found ids are kept in a
bounded memory cache: an instance's ids do not change.

The instance is the admin's own server, reached at ``[upstream] url`` with ``[upstream]
token`` (an admin's or moderator's token): no SSRF policy, but its answers are still read
within a size limit and a timeout, and every failure is an ``InstanceRefused`` saying
whether trying again can help.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from relay.network import DEFAULT_USER_AGENT

__all__ = [
    "SUPPORTED",
    "InstanceActions",
    "InstanceRefused",
    "LemmyActions",
    "MastodonActions",
    "MisskeyActions",
    "for_software",
]

#: The families whose admin API Sluice speaks.
SUPPORTED = ("mastodon", "lemmy", "misskey")

#: The most of an answer read: lookups and acknowledgements are small.
_MAX_ANSWER = 256 * 1024
#: Reasons and comments sent along (Mastodon's report comment: 1000 characters).
_MAX_TEXT = 1000
#: Answers that may succeed later.
_RETRIED = frozenset({408, 425, 429})


class InstanceRefused(Exception):
    """A call did not do what was asked. ``permanent``: trying again cannot help (a 4xx,
    a refused token, an unsupported action); otherwise it may (5xx, 429, timeouts)."""

    def __init__(self, reason: str, *, permanent: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.status = status


def _text(value: str) -> str:
    return value[:_MAX_TEXT]


class InstanceActions:
    """The calls every family answers (or refuses, permanently, as unsupported)."""

    software: ClassVar[str] = ""
    #: What ``purge`` can target on this software ("post", "person").
    purges: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        base_url: str,
        token: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 30.0,
        cache_size: int = 1024,
    ) -> None:
        self.base = URL(base_url.rstrip("/"))
        self.token = token
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        #: Lookups that went to the instance (the cache's misses), for tests and metrics.
        self.lookups = 0

    # -- what each family implements -------------------------------------------------

    async def _find_account(self, uri: str) -> str | None:
        raise NotImplementedError

    async def _find_post(self, uri: str) -> str | None:
        raise NotImplementedError

    async def ban(self, account_id: str, reason: str) -> None:
        """Suspend the account on the instance (its posts no longer shown)."""
        raise NotImplementedError

    async def remove(self, post_id: str, actor: str, reason: str) -> None:
        """Take the post ``post_id`` (by ``actor``, its author's URI) off the instance."""
        raise NotImplementedError

    async def purge(self, target: str, local_id: str, reason: str) -> None:
        """Delete ``target`` ("post" or "person") and what hangs off it, for good."""
        raise self._unsupported(f"purging a {target}")

    async def report(
        self, account_id: str, post_id: str | None, comment: str, category: str
    ) -> None:
        """File a report the instance's moderators see."""
        raise NotImplementedError

    # -- lookups, cached ---------------------------------------------------------------

    async def account(self, uri: str) -> str | None:
        """The instance's id of the account at ``uri`` (fetched by the instance if new);
        None when the instance cannot find it."""
        return await self._cached("account", uri, self._find_account)

    async def post(self, uri: str) -> str | None:
        """The instance's id of the post at ``uri``; None when it cannot find it."""
        return await self._cached("post", uri, self._find_post)

    async def _cached(self, kind: str, uri: str, find: Any) -> str | None:
        key = (kind, uri)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        self.lookups += 1
        found = await find(uri)
        if found is not None:  # a miss is not kept: the object may arrive later
            self._cache[key] = found
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return found

    # -- HTTP ----------------------------------------------------------------------------

    def _unsupported(self, what: str) -> InstanceRefused:
        return InstanceRefused(
            f"{self.software}'s API offers no way of {what}", permanent=True, status=None
        )

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": DEFAULT_USER_AGENT,
        }

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        scope: str,
        params: dict[str, str] | None = None,
        form: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        missing: tuple[str, ...] = (),
    ) -> Any:
        """One request; the answer's JSON (None when empty). ``missing``: error codes
        that mean "no such object" (answered as ``_Missing``); without them a 404 does.
        With them a bare 404 is an endpoint the instance lacks (a wrong API version),
        which must not read as "not found"."""
        sent = self._headers() if headers is None else headers
        try:
            async with self.session.request(
                method,
                self.base / path,
                params=params,
                data=form,
                json=body,
                headers=sent,
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.content.read(_MAX_ANSWER + 1)
        except TimeoutError as exc:
            raise InstanceRefused(f"{what}: the instance API timed out", permanent=False) from exc
        except aiohttp.ClientError as exc:
            raise InstanceRefused(
                f"{what}: the instance API is unreachable: {type(exc).__name__}", permanent=False
            ) from exc
        text = raw[:_MAX_ANSWER].decode("utf-8", "replace")
        if 200 <= status < 300:
            if len(raw) > _MAX_ANSWER:
                raise InstanceRefused(f"{what}: answer over {_MAX_ANSWER} bytes", permanent=False)
            if not text.strip():
                return None
            try:
                return json.loads(text)
            except ValueError:
                raise InstanceRefused(
                    f"{what}: the instance answered {status} with no JSON", permanent=False
                ) from None
        said = f"{what}: the instance answered {status}: {text[:200]}"
        if status in (401, 403):
            raise InstanceRefused(
                f"{what}: the instance refused the [upstream] token ({status}); it needs {scope}."
                f" {text[:200]}",
                permanent=True,
                status=status,
            )
        missing_object = any(code in text for code in missing) if missing else status == 404
        if missing_object:
            raise _Missing(said, permanent=True, status=status)
        raise InstanceRefused(
            said, permanent=not (status >= 500 or status in _RETRIED), status=status
        )


class _Missing(InstanceRefused):
    """The instance has no such object."""


# -- Mastodon ---------------------------------------------------------------------------


class MastodonActions(InstanceActions):
    """Mastodon's admin API (OAuth user token of a staff account).

    Mastodon has no admin endpoint that deletes another user's status (upstream PR
    #27675, closed unmerged), so ``remove`` silences the account and files a report
    naming the status, for a moderator to delete it in the web UI; the silence comes
    first because an account action "also resolves any open reports against this
    account", which would close the report just filed. There is no purge.
    """

    software = "mastodon"

    async def _search(self, uri: str, kind: str) -> list[dict[str, Any]]:
        try:
            answer = await self._call(
                "GET",
                "api/v2/search",
                params={"q": uri, "resolve": "true", "type": kind, "limit": "5"},
                what=f"looking up {uri}",
                scope="read:search",
            )
        except _Missing:
            return []
        found = answer.get(kind) if isinstance(answer, dict) else None
        return [item for item in found or () if isinstance(item, dict)][:5]

    @staticmethod
    def _pick(items: list[dict[str, Any]], uri: str) -> str | None:
        """The item whose ``uri`` is the one asked for; a lone answer when the server
        does not say its items' ``uri``."""
        for item in items:
            if item.get("uri") == uri and item.get("id") is not None:
                return str(item["id"])
        if len(items) == 1 and "uri" not in items[0] and items[0].get("id") is not None:
            return str(items[0]["id"])
        return None

    async def _find_account(self, uri: str) -> str | None:
        return self._pick(await self._search(uri, "accounts"), uri)

    async def _find_post(self, uri: str) -> str | None:
        return self._pick(await self._search(uri, "statuses"), uri)

    async def _action(self, account_id: str, kind: str, reason: str) -> None:
        await self._call(
            "POST",
            f"api/v1/admin/accounts/{account_id}/action",
            form=[("type", kind), ("text", _text(reason)), ("send_email_notification", "false")],
            what=f"{kind} account {account_id}",
            scope="admin:write:accounts (and the Manage Users permission)",
        )

    async def ban(self, account_id: str, reason: str) -> None:
        await self._action(account_id, "suspend", reason)

    async def remove(self, post_id: str, actor: str, reason: str) -> None:
        account_id = await self.account(actor)
        if account_id is None:
            raise InstanceRefused(f"the instance cannot find {actor}", permanent=True)
        await self._action(account_id, "silence", reason)
        await self.report(account_id, post_id, reason, "other")

    async def report(
        self, account_id: str, post_id: str | None, comment: str, category: str
    ) -> None:
        form = [("account_id", account_id), ("comment", _text(comment)), ("forward", "false")]
        form.append(("category", category if category in ("spam", "legal", "other") else "other"))
        if post_id is not None:
            form.append(("status_ids[]", post_id))
        await self._call(
            "POST",
            "api/v1/reports",
            form=form,
            what=f"reporting account {account_id}",
            scope="write:reports",
        )


# -- Lemmy ------------------------------------------------------------------------------


class LemmyActions(InstanceActions):
    """Lemmy's API (an admin's JWT as a bearer token, 0.19+). ``version`` "v3" is Lemmy
    0.19; "v4" is Lemmy 1.0 ([upstream] lemmy_api), which moves the ban to ``admin/ban``
    with ``remove_or_restore_data``, answers ``resolve_object`` with the found view
    itself (tagged by ``type_``), and lets a report go to the instance's admins alone
    (``violates_instance_rules``: not to the community's moderators, not federated).
    A removal is reversible (a moderator restores it), a purge is not."""

    software = "lemmy"
    purges = frozenset({"post", "person"})
    _MISSING = ("couldnt_find_object", "couldnt_find_post", "couldnt_find_person")

    def __init__(
        self, *args: Any, version: str = "v3", remove_data: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if version not in ("v3", "v4"):
            raise ValueError(f"Lemmy API version {version!r} (known: v3, v4)")
        self.version = version
        #: A ban also removes the person's posts and comments ([upstream]
        #: ban_removes_data); a removal, unlike a purge, a moderator can restore.
        self.remove_data = remove_data

    async def _resolve(self, uri: str) -> dict[str, Any]:
        try:
            answer = await self._call(
                "GET",
                f"api/{self.version}/resolve_object",
                params={"q": uri},
                what=f"looking up {uri}",
                scope="a logged-in, non-banned account",
                missing=self._MISSING,
            )
        except _Missing:
            return {}
        return answer if isinstance(answer, dict) else {}

    @staticmethod
    def _id(view: Any, inner: str) -> str | None:
        found = view.get(inner) if isinstance(view, dict) else None
        ident = found.get("id") if isinstance(found, dict) else None
        return str(ident) if isinstance(ident, int) else None

    async def _find(self, uri: str, kind: str) -> str | None:
        answer = await self._resolve(uri)
        if self.version == "v3":  # {"person": PersonView} or {"post": PostView}
            return self._id(answer.get(kind), kind)
        # v4: the view itself, {"type_": "person", "person": {...}, ...}
        return self._id(answer, kind) if answer.get("type_") == kind else None

    async def _find_account(self, uri: str) -> str | None:
        return await self._find(uri, "person")

    async def _find_post(self, uri: str) -> str | None:
        return await self._find(uri, "post")

    async def _admin(self, path: str, body: dict[str, Any], what: str) -> None:
        await self._call(
            "POST", f"api/{self.version}/{path}", body=body, what=what, scope="an admin's JWT"
        )

    async def ban(self, account_id: str, reason: str) -> None:
        person = int(account_id)
        if self.version == "v3":
            path = "user/ban"
            body = {"person_id": person, "ban": True, "remove_data": self.remove_data}
        else:
            path = "admin/ban"
            body = {"person_id": person, "ban": True, "remove_or_restore_data": self.remove_data}
        await self._admin(path, {**body, "reason": _text(reason)}, f"ban person {person}")

    async def remove(self, post_id: str, actor: str, reason: str) -> None:
        body = {"post_id": int(post_id), "removed": True, "reason": _text(reason)}
        await self._admin("post/remove", body, f"remove post {post_id}")

    async def purge(self, target: str, local_id: str, reason: str) -> None:
        if target not in self.purges:
            raise self._unsupported(f"purging a {target}")
        field = "post_id" if target == "post" else "person_id"
        body = {field: int(local_id), "reason": _text(reason)}
        await self._admin(f"admin/purge/{target}", body, f"purge {target} {local_id}")

    async def report(
        self, account_id: str, post_id: str | None, comment: str, category: str
    ) -> None:
        if post_id is None:
            raise self._unsupported("reporting an account without a post (post/report only)")
        body: dict[str, Any] = {"post_id": int(post_id), "reason": _text(comment)}
        if self.version == "v4":
            body["violates_instance_rules"] = True
        await self._call(
            "POST",
            f"api/{self.version}/post/report",
            body=body,
            what=f"reporting post {post_id}",
            scope="a logged-in account",
        )


# -- Misskey ----------------------------------------------------------------------------


class MisskeyActions(InstanceActions):
    """Misskey's API: the token goes as ``i`` in the JSON body (as relay.instance sends
    it), a moderator's with ``write:admin:suspend-user`` and ``write:notes``. Deleting a
    note is final (and federates a Delete); there is no purge, and the facts name no
    report endpoint."""

    software = "misskey"
    _MISSING = ("NO_SUCH_OBJECT", "NO_SUCH_NOTE", "NO_SUCH_USER")

    async def _post(self, path: str, body: dict[str, Any], what: str, scope: str) -> Any:
        headers = {"Accept": "application/json", "User-Agent": DEFAULT_USER_AGENT}
        return await self._call(
            "POST",
            f"api/{path}",
            body={**body, "i": self.token},
            headers=headers,
            what=what,
            scope=scope,
            missing=self._MISSING,
        )

    async def _show(self, uri: str, kind: str) -> str | None:
        try:
            answer = await self._post("ap/show", {"uri": uri}, f"looking up {uri}", "read access")
        except _Missing:
            return None
        if not isinstance(answer, dict) or answer.get("type") != kind:
            return None
        found = answer.get("object")
        ident = found.get("id") if isinstance(found, dict) else None
        return ident if isinstance(ident, str) and ident else None

    async def _find_account(self, uri: str) -> str | None:
        return await self._show(uri, "User")

    async def _find_post(self, uri: str) -> str | None:
        return await self._show(uri, "Note")

    async def ban(self, account_id: str, reason: str) -> None:
        await self._post(
            "admin/suspend-user",
            {"userId": account_id},
            f"suspend user {account_id}",
            "write:admin:suspend-user (a moderator's token)",
        )

    async def remove(self, post_id: str, actor: str, reason: str) -> None:
        try:
            await self._post(
                "notes/delete",
                {"noteId": post_id},
                f"delete note {post_id}",
                "write:notes (a moderator's token)",
            )
        except _Missing:
            return  # already gone: what was asked

    async def report(
        self, account_id: str, post_id: str | None, comment: str, category: str
    ) -> None:
        raise self._unsupported("filing a report (not in the API facts Sluice was built from)")


_FAMILIES: dict[str, type[InstanceActions]] = {
    "mastodon": MastodonActions,
    "lemmy": LemmyActions,
    "misskey": MisskeyActions,
}


def for_software(
    software: str,
    base_url: str,
    token: str,
    session: aiohttp.ClientSession,
    *,
    timeout: float = 30.0,
    ban_removes_data: bool = False,
    lemmy_api: str = "v3",
) -> InstanceActions:
    """The actions for ``[upstream] software``; ValueError for a family Sluice cannot
    act on (GoToSocial, Pleroma and Akkoma speak other admin APIs). ``ban_removes_data``:
    a Lemmy ban also removes the person's content (others have no such choice);
    ``lemmy_api``: "v3" (Lemmy 0.19) or "v4" (Lemmy 1.0)."""
    family = _FAMILIES.get(software)
    if family is None:
        raise ValueError(f"no instance actions for {software!r} (supported: {SUPPORTED})")
    if family is LemmyActions:
        return LemmyActions(
            base_url,
            token,
            session,
            timeout=timeout,
            version=lemmy_api,
            remove_data=ban_removes_data,
        )
    return family(base_url, token, session, timeout=timeout)
