"""The actor's public routes: its document, WebFinger, NodeInfo, an empty outbox.

None requires a signature: a server in authorized-fetch mode must be able to fetch the
key that verifies Sluice's own signed fetches (Mastodon serves its instance actor so).
All live under ``base_url``'s path, so a prefix the admin routes to Sluice works too.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from relay import __version__
from relay.actor.identity import Actor
from relay.receipt import CONTEXT_PATH, context_document

__all__ = ["ACTIVITY_JSON", "actor_routes", "add_actor_routes"]

ACTIVITY_JSON = "application/activity+json"
_JRD = "application/jrd+json"
_NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/2.1"
_NODEINFO_PROFILE = "http://nodeinfo.diaspora.software/ns/schema/2.1#"
_FEDIVERSE_ACTOR = "https://www.w3.org/ns/activitystreams#Application"


def _json(body: Any, content_type: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode(),
        headers={"Content-Type": content_type},
    )


def _wants_html(request: web.Request) -> bool:
    """A browser: it asks for HTML and names no ActivityStreams type."""
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "activity+json" not in accept and "ld+json" not in accept


def _problem(status: int, message: str) -> web.Response:
    return _json({"error": message}, "application/json", status)


def actor_routes(actor: Actor) -> web.RouteTableDef:
    """The routes, each under the actor's path prefix."""
    routes = web.RouteTableDef()
    prefix = actor.prefix

    @routes.get(f"{prefix}/actor")
    async def document(request: web.Request) -> web.Response:
        if _wants_html(request):
            return web.Response(
                text=f"{actor.handle}: {actor.document()['summary']}\n", content_type="text/plain"
            )
        return _json(actor.document(), ACTIVITY_JSON)

    @routes.get(f"{prefix}{CONTEXT_PATH}")
    async def receipt_context(request: web.Request) -> web.Response:
        """The receipts' JSON-LD context, at the URL each receipt's @context names."""
        return _json(context_document(), "application/ld+json")

    @routes.get(f"{prefix}/outbox")
    async def outbox(request: web.Request) -> web.Response:
        empty = {
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": actor.outbox,
            "type": "OrderedCollection",
            "totalItems": 0,
            "orderedItems": [],
        }
        return _json(empty, ACTIVITY_JSON)

    @routes.get(f"{prefix}/.well-known/webfinger")
    async def webfinger(request: web.Request) -> web.Response:
        resource = request.query.get("resource")
        if not resource:
            return _problem(400, "the resource parameter is missing")
        known = {
            f"acct:{actor.handle}".lower(),
            actor.id,
            # FEP-d556: the server's own URL finds its server-level actor.
            actor.base_url,
            f"{actor.base_url}/",
        }
        if resource.lower() not in known and resource not in known:
            return _problem(404, f"no such resource here: {resource[:200]}")
        body = {
            "subject": f"acct:{actor.handle}",
            "aliases": [actor.id],
            "links": [
                {"rel": "self", "type": ACTIVITY_JSON, "href": actor.id},
                {"rel": _FEDIVERSE_ACTOR, "type": ACTIVITY_JSON, "href": actor.id},
            ],
        }
        return _json(body, _JRD)

    @routes.get(f"{prefix}/.well-known/nodeinfo")
    async def nodeinfo_links(request: web.Request) -> web.Response:
        links = {"links": [{"rel": _NODEINFO_SCHEMA, "href": f"{actor.base_url}/nodeinfo/2.1"}]}
        return _json(links, "application/json")

    @routes.get(f"{prefix}/nodeinfo/2.1")
    async def nodeinfo(request: web.Request) -> web.Response:
        body = {
            "version": "2.1",
            "software": {"name": "sluice", "version": __version__},
            "protocols": ["activitypub"],
            "services": {"inbound": [], "outbound": []},
            "openRegistrations": False,
            "usage": {
                "users": {"total": 0, "activeMonth": 0, "activeHalfyear": 0},
                "localPosts": 0,
            },
            "metadata": {
                "nodeName": "Sluice",
                "nodeDescription": "ActivityPub filtering relay",
                "actor": actor.id,
            },
        }
        return _json(body, f'application/json; profile="{_NODEINFO_PROFILE}"')

    return routes


def add_actor_routes(app: web.Application, actor: Actor | None) -> None:
    """Serve the actor's routes on ``app``; nothing when there is no actor."""
    if actor is not None:
        app.add_routes(actor_routes(actor))
