"""Find every media URL an instance would fetch for an activity, without fetching anything.

Servers send media in many shapes; the comments below name which server sends
which. What is certainly not media (web pages, torrents and magnets, JSON
metadata, trackers, hashtags, mentions) is left out. What may be media stays in,
with ``media_type=None`` when nothing declares a type: the fetcher decides from
the bytes, never from an extension or a header.

A declared type is believed only where it picks one of several alternatives: in
an object's own ``url`` (PeerTube lists its watch page, playlist and torrents
beside the files; Lemmy, Funkwhale, Hubzilla their web pages) and for a ``Link``,
which points at a resource rather than being a file (Lemmy's and Friendica's link
posts). A file object (Document, Image...) or a bare URL in ``attachment``,
``icon``, ``image`` or emoji is media whatever it declares: Misskey and GoToSocial
download those and decide the type by sniffing, so "text/html" must not hide one.

The walk is bounded in depth and in the number of refs, so a hostile activity
can neither exhaust the stack nor make us fetch thousands of URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MediaRef", "media_refs"]


@dataclass(frozen=True, slots=True)
class MediaRef:
    """One media URL found in an activity, and where and how it was declared."""

    url: str  # absolute http(s) URL, as found (surrounding whitespace stripped)
    where: str  # path in the activity, e.g. "object.attachment[0].url"
    role: str  # attachment, icon, image, preview, thumbnail, emoji, page-url, link,
    # rendition, avatar, header
    media_type: str | None  # declared type, lower-cased, without parameters
    declared_kind: str | None  # "image", "video" or "audio", from the AS2 type or media type


# Keys whose values are pictures, and the role they give. Funkwhale's Album sends its
# cover both as `cover` (a Link) and as `image`.
_SLOT_ROLES = {
    "icon": "icon",
    "image": "image",
    "preview": "preview",
    "thumbnail": "thumbnail",
    "cover": "image",
}
_ACTOR_TYPES = frozenset({"Person", "Service", "Group", "Organization", "Application"})
_ACTOR_SLOT_ROLES = {"icon": "avatar", "image": "header"}
# Roles that what is nested inside keeps: Smithereen's avatar is an `icon` whose own
# `image` is the uncropped original.
_STICKY_ROLES = frozenset({"avatar", "header", "emoji"})
# Embedded objects whose media the instance takes too: the object of Create, Update,
# Announce; an actor embedded in the activity (Kroeg); Funkwhale's library Audio
# embeds its `track`, which embeds its `album`.
_EMBEDDED_KEYS = frozenset({"object", "actor", "track", "album"})
# Objects that can stand where media is expected and carry media of their own:
# WordPress and NodeBB send a Note as `preview`, Friendica quotes a post by putting
# the quoted Note in `attachment`.
_CONTENT_TYPES = frozenset({"Note", "Article", "Page", "Question", "Event", "ChatMessage"})
# Never media wherever they sit: Mastodon's profile fields, PeerTube's Infohash tags.
_NOT_MEDIA_TYPES = frozenset({"Hashtag", "Mention", "PropertyValue", "Infohash", "Tombstone"})
# An object of these types is a file: its own `url` is the file (PeerTube Video,
# Funkwhale Audio, Hubzilla Image). Other objects' `url` is their web page, except...
_FILE_TYPES = frozenset({"Image", "Video", "Audio", "Document"})
# ...Lemmy's Page, whose `url` is the link the post is about, often an image.
_PAGE_TYPE = "Page"
_KIND_OF_TYPE = {"Image": "image", "Video": "video", "Audio": "audio"}
_KINDS = frozenset({"image", "video", "audio"})

# Declared types that are certainly not media, where a declared type is believed
# (an object's own `url`, a Link; see the module docstring).
_NOT_MEDIA_MEDIA_TYPES = frozenset(
    {
        "text/html",  # watch pages, articles (PeerTube, Lemmy, Funkwhale, Hubzilla)
        "application/xhtml+xml",
        "application/x-bittorrent",  # PeerTube torrents; magnets add ";x-scheme-handler/magnet"
        "application/json",  # PeerTube file metadata and segment hashes
        "application/ld+json",  # FEP-e232 object links (quotes)
        "application/activity+json",
        "application/x-mpegurl",  # PeerTube HLS playlist: text; its `tag` lists the renditions
        "application/vnd.apple.mpegurl",
        "application/rss+xml",  # Funkwhale channel feeds
        "application/atom+xml",
    }
)
# PeerTube: rel ["metadata", "video/mp4"] on JSON metadata, ["tracker", "http"] on trackers
# (which declare no media type).
_NOT_MEDIA_RELS = frozenset({"metadata", "tracker"})


def media_refs(
    activity: dict[str, Any], *, max_refs: int = 64, max_depth: int = 8
) -> list[MediaRef]:
    """The media URLs in ``activity``, deduplicated by URL, in document order.

    The first place a URL is found wins. Values of the wrong JSON type are skipped,
    never raised on.
    """
    walk = _Walk(max_refs=max_refs, max_depth=max_depth)
    if isinstance(activity, dict):
        walk.object(activity, "", 0)
    return walk.refs


class _Walk:
    def __init__(self, *, max_refs: int, max_depth: int) -> None:
        self.refs: list[MediaRef] = []
        self.seen: set[str] = set()
        self.max_refs = max_refs
        self.max_depth = max_depth

    @property
    def full(self) -> bool:
        return len(self.refs) >= self.max_refs

    def object(self, obj: dict[str, Any], where: str, depth: int) -> None:
        """An activity, a post, an actor: media sits under known keys."""
        if depth > self.max_depth:
            return
        types = _types(obj)
        is_actor = bool(types & _ACTOR_TYPES)
        for key, value in obj.items():
            if self.full:
                return
            path = _join(where, key)
            if key == "attachment":
                self.media(value, path, "attachment", depth + 1)
            elif key in _SLOT_ROLES:
                role = (_ACTOR_SLOT_ROLES.get(key) if is_actor else None) or _SLOT_ROLES[key]
                self.media(value, path, role, depth + 1)
            elif key == "tag":
                self.emoji(value, path, depth + 1)
            elif key == "url":
                self.object_url(value, path, types, depth + 1)
            elif key in _EMBEDDED_KEYS:
                # A bare string is the id of an object, not media: the hold fetches
                # it (relay.media.objects) and finds its media there.
                for item_path, item in _each(value, path):
                    if isinstance(item, dict):
                        self.object(item, item_path, depth + 1)

    def object_url(self, value: Any, where: str, types: frozenset[str], depth: int) -> None:
        """An object's own `url`: a file, Lemmy's link, or (mostly) a web page."""
        if _PAGE_TYPE in types:
            role, any_url = "page-url", True
        elif types & _FILE_TYPES:
            role, any_url = "link", True
        else:
            # A Note's or an actor's url is its web page; take only Links that declare media.
            role, any_url = "link", False
        kind = _kind(types, None)
        for item_path, item in _each(value, where):
            if isinstance(item, str) and any_url:
                self.add(item, item_path, role, None, kind)
            elif isinstance(item, dict) and (any_url or _kind_of(_media_type(item))):
                self.media_node(item, item_path, role, depth, None, kind, in_url=True)

    def emoji(self, value: Any, where: str, depth: int) -> None:
        """Custom emoji in `tag`; hashtags, mentions and plain Links there are not media."""
        if depth > self.max_depth:
            return
        for item_path, item in _each(value, where):
            if isinstance(item, dict) and "Emoji" in _types(item):
                self.media(item.get("icon"), _join(item_path, "icon"), "emoji", depth + 1)

    def media(
        self,
        value: Any,
        where: str,
        role: str,
        depth: int,
        media_type: str | None = None,
        kind: str | None = None,
        *,
        in_url: bool = False,
    ) -> None:
        """A value where media is expected: a URL, an Image/Document/Link, or a list of them.

        ``in_url``: the value lies in an object's own `url` (or a Link's `href`), where a
        declared non-media type leaves a URL out."""
        for item_path, item in _each(value, where):
            if self.full:
                return
            if isinstance(item, str):
                self.add(item, item_path, role, media_type, kind, believe_type=in_url)
            elif isinstance(item, dict):
                self.media_node(item, item_path, role, depth, media_type, kind, in_url=in_url)

    def media_node(
        self,
        node: dict[str, Any],
        where: str,
        role: str,
        depth: int,
        media_type: str | None,
        kind: str | None,
        *,
        in_url: bool = False,
    ) -> None:
        if depth > self.max_depth:
            return
        types = _types(node)
        if types & _NOT_MEDIA_TYPES or _rels(node) & _NOT_MEDIA_RELS:
            return
        if types & _CONTENT_TYPES:
            self.object(node, where, depth)
            return
        # A Link inside a Document declares its own type (Pleroma); a bare URL inside
        # one takes the Document's (Mastodon, Misskey, GoToSocial, Pixelfed).
        declared = _media_type(node)
        # A Link points at a resource, so the type it declares itself is believed (one
        # it would inherit from a Document is not). A Link is known by its type, else
        # by an `href` without a `url`.
        is_link = "Link" in types or (not types and "href" in node and "url" not in node)
        in_url = in_url or (is_link and declared is not None)
        media_type = declared or media_type
        kind = _kind(types, declared) or kind
        for key, value in node.items():
            if self.full:
                return
            path = _join(where, key)
            if key in ("url", "href"):
                self.media(value, path, role, depth + 1, media_type, kind, in_url=in_url)
            elif key == "tag":
                # PeerTube lists an HLS playlist's renditions in the Link's `tag`.
                self.media(value, path, "rendition", depth + 1)
            elif key in _SLOT_ROLES:
                # Mastodon puts an audio or video attachment's thumbnail in its `icon`;
                # Friendica a preview URL in `image`.
                nested = role if role in _STICKY_ROLES else _SLOT_ROLES[key]
                self.media(value, path, nested, depth + 1)

    def add(
        self,
        value: str,
        where: str,
        role: str,
        media_type: str | None,
        kind: str | None,
        *,
        believe_type: bool = False,
    ) -> None:
        url = value.strip()
        if self.full or url in self.seen:
            return
        if believe_type and media_type in _NOT_MEDIA_MEDIA_TYPES:
            return
        if not _is_http(url):  # data:, magnet:, ipfs:, wss: (PeerTube's tracker socket)...
            return
        self.seen.add(url)
        self.refs.append(MediaRef(url, where, role, media_type, kind or _kind_of(media_type)))


def _each(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """AS2 properties hold one value or a list of them; lists inside lists are not AS2."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, list):
                yield f"{where}[{index}]", item
    elif value is not None:
        yield where, value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _types(node: dict[str, Any]) -> frozenset[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return frozenset((kind,))
    if isinstance(kind, list):  # JSON-LD allows several types
        return frozenset(k for k in kind if isinstance(k, str))
    return frozenset()


def _rels(node: dict[str, Any]) -> frozenset[str]:
    rel = node.get("rel")
    if isinstance(rel, str):
        return frozenset((rel.lower(),))
    if isinstance(rel, list):
        return frozenset(r.lower() for r in rel if isinstance(r, str))
    return frozenset()


def _media_type(node: dict[str, Any]) -> str | None:
    value = node.get("mediaType")
    if value is None:
        value = node.get("mimeType")  # Funkwhale before 1.0 (fixed in 5654aaa2, March 2020)
    if not isinstance(value, str):
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _kind_of(media_type: str | None) -> str | None:
    if media_type is None:
        return None
    prefix = media_type.split("/", 1)[0]
    return prefix if prefix in _KINDS else None


def _kind(types: frozenset[str], media_type: str | None) -> str | None:
    for name in sorted(types):
        if name in _KIND_OF_TYPE:
            return _KIND_OF_TYPE[name]
    return _kind_of(media_type)


def _is_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
