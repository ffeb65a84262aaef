"""Sluice's own ActivityPub actor (issue 13): keys, document, routes.

``Actor.load(base_url, name, key_dir)`` makes the keys on first start and returns None
when no ``base_url`` is configured; ``add_actor_routes`` serves it.
"""

from relay.actor.identity import Actor, ActorError
from relay.actor.keys import ActorKeyError, ActorKeys, load_keys, rotate_keys
from relay.actor.routes import actor_routes, add_actor_routes

__all__ = [
    "Actor",
    "ActorError",
    "ActorKeyError",
    "ActorKeys",
    "actor_routes",
    "add_actor_routes",
    "load_keys",
    "rotate_keys",
]
