"""media_refs on the activities real servers send, and on hostile or broken ones.

The documents in ``activities/`` are written after the servers' own fixtures and
serializers; each names its source in ``_source``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import relay.media.refs as refs_module
from relay.media.refs import MediaRef, media_refs

ACTIVITIES = Path(__file__).parent / "activities"

Found = tuple[str, str, str | None]


def load(name: str) -> dict[str, Any]:
    return json.loads((ACTIVITIES / name).read_text(encoding="utf-8"))


def found(activity: Any, **limits: int) -> list[Found]:
    return [(ref.url, ref.role, ref.media_type) for ref in media_refs(activity, **limits)]


def by_url(activity: Any) -> dict[str, MediaRef]:
    return {ref.url: ref for ref in media_refs(activity)}


# URL prefixes, to keep the expectations readable.
MASTO = "https://cdn.masto.host/floss/"
NIU = "https://cd.niu.moe/accounts/"
GTS = "http://localhost:8080/fileserver/"
GTS_EMOJI = f"{GTS}01AY6P665V14JJR0AFVRT7311Y/emoji/original/01F8MH9H8E4VG3KDYJR9EGPXCQ.png"
MK = "https://media.misskeyusercontent.jp/"
ARK = "https://s3.arkjp.net/"
LEMMY = "https://enterprise.lemmy.ml/pictrs/image/"
TIL = "https://tilvids.com/"
TIL_HLS = f"{TIL}static/streaming-playlists/hls/e7946124-7b72-4ad7-9d22-844a84bb2de1/"
FRAMA = "https://framatube.org/static/"
FRAMA_ID = "6050732a-8a7a-43d4-a6cd-809525a1d206"
PX = "https://pxscdn.com/public/m/_v2/2/a1b2c3d4e-f5a6b7/"
FW_CHANNEL = "https://channels.tests.funkwhale.audio/"
FW_LISTEN = "api/v1/listen/3901e5d8-0445-49d5-9711-e096cf32e515/"
FW_UPLOAD = "?upload=42342395-0208-4fee-a38d-259a6dae0871&download=false"
FW_LIB = "https://awesome.music/"
HUB = "https://hub.somaton.com/photo/452583b2-7e1f-4ac3-8334-ff666f134afe"
SMITH = "https://friends.grishka.me/i/"
SMITH_FILE = (
    "bG9jYWw6Ly8vcy91cGxvYWRzL2F2YXRhcnMvNTYzODRhODEwODk5ZTRjMzI4YmY4YmQwM2Q2MWM3NmMud2VicA.jpg"
)
WP = "https://i0.wp.com/dbzer0.com/wp-content/uploads/2025/12/"

EXPECTED: dict[str, list[Found]] = {
    # Documents with a url string and mediaType; an audio's thumbnail in its `icon`;
    # custom emoji in `tag`. Not: the status page in `url`, the Mention, the Hashtag.
    "mastodon-create-note.json": [
        (
            f"{MASTO}media_attachments/files/113/306/826/682/985/891/original/c8d906a2f2ab2334.jpg",
            "attachment",
            "image/jpeg",
        ),
        (
            f"{MASTO}media_attachments/files/113/306/826/700/000/001/original/jingle.mp3",
            "attachment",
            "audio/mpeg",
        ),
        (
            f"{MASTO}media_attachments/files/113/306/826/700/000/001/thumbnail/jingle.png",
            "icon",
            "image/png",
        ),
        (
            f"{MASTO}media_attachments/files/113/306/826/700/000/002/original/plasma.mp4",
            "attachment",
            "video/mp4",
        ),
        (f"{MASTO}custom_emojis/images/000/004/711/original/konqi.png", "emoji", "image/png"),
    ],
    # Not: the PropertyValue fields, the profile page in `url`.
    "mastodon-update-person.json": [
        (
            "http://mastodon.example.org/system/custom_emojis/images/000/000/042/original/blobcat.png",
            "emoji",
            "image/png",
        ),
        (f"{NIU}avatars/000/033/323/original/fd7f8ae0b3ffedc9.jpeg", "avatar", "image/jpeg"),
        (f"{NIU}headers/000/033/323/original/850b3448fa5fd477.png", "header", "image/png"),
    ],
    # Pleroma's emoji icon declares no mediaType.
    "pleroma-create-note.json": [
        (
            "https://greenish.red/media/2c9f7e1e-0b0a-4d3e-9c1f-5a0b0c1d2e3f/cat.webp",
            "attachment",
            "image/webp",
        ),
        ("https://greenish.red/emoji/blobcat/blobcatcomfy.png", "emoji", None),
    ],
    # One attachment object whose url is an array of Links.
    "pleroma-create-chat-message.json": [
        (
            "http://2hu.gensokyo/media/6b2f4b0f-2c60-4c7d-8d2a-1f1b7f0b5e4a/marisa.png",
            "attachment",
            "image/png",
        ),
        ("http://2hu.gensokyo/emoji/Firefox.gif", "emoji", None),
    ],
    # Not: _misskey_quote / quoteUrl (a note, not media), the Hashtag, the Mention.
    "misskey-create-note.json": [
        (f"{MK}io/webpublic-3f7e93c0-34f5-443c-acc0-f415cb2342b4.webp", "attachment", "image/webp"),
        (f"{MK}io/9d1b4f0c-2e51-4d8a-9d1c-7b3f7c3f0a11.mp4", "attachment", "video/mp4"),
        (f"{MK}emoji/ablobcatnod.gif", "emoji", "image/gif"),
    ],
    # Misskey's avatar and banner declare no mediaType.
    "misskey-update-person.json": [
        (f"{ARK}misskey/webpublic-3f7e93c0-34f5-443c-acc0-f415cb2342b4.jpg", "avatar", None),
        (f"{ARK}misskey/webpublic-2db63d1d-490b-488b-ab62-c93c285f26b6.png", "header", None),
        (f"{ARK}emoji/murakamisan_tutinoko_hasitumami_crying.png", "emoji", "image/png"),
    ],
    # An emoji reaction: the emoji sits in the activity's own `tag`.
    "misskey-like-emoji.json": [
        (
            "https://misskey.local.live/files/webpublic-8f8a9768-7264-4171-88d6-2356aabeadcd",
            "emoji",
            "image/png",
        ),
    ],
    "gotosocial-create-note.json": [
        (
            f"{GTS}01F8MH17FWEB39HZJ76B6VXSKF/attachment/original/01F8MH6NEM8D7527KZAECTCR76.jpg",
            "attachment",
            "image/jpeg",
        ),
        (GTS_EMOJI, "emoji", "image/png"),
    ],
    # `tag` is a single Emoji object, not an array.
    "gotosocial-update-person.json": [
        (
            f"{GTS}01F8MH1H7YV1Z7D2C8K2730QBF/avatar/original/01F8MH58A357CV5K7R7TJMSH6S.jpg",
            "avatar",
            "image/jpeg",
        ),
        (
            f"{GTS}01F8MH1H7YV1Z7D2C8K2730QBF/header/original/01PFPMWK2FF0D9WMHEJHR07C3Q.jpg",
            "header",
            "image/jpeg",
        ),
        (GTS_EMOJI, "emoji", "image/png"),
    ],
    # A link post: the text/html Link attachment is not media, the thumbnail is.
    "lemmy-create-page-link.json": [
        (f"{LEMMY}0f1a2b3c-thumbnail.jpeg", "image", None),
    ],
    # An image post announced by its community: the Link with no mediaType is a
    # candidate for sniffing; the same picture as `image` is the same URL.
    "lemmy-announce-create-page.json": [
        (f"{LEMMY}eOtYb9iEiB.png", "attachment", None),
    ],
    # Older Lemmy: the Page's `url` is the picture (the Page's mediaType is its content's).
    "lemmy-create-page-url.json": [
        (f"{LEMMY}US52d9DPvf.jpg", "page-url", None),
        (f"{LEMMY}lwFAcXHUjS.jpg", "image", None),
    ],
    # Not: the watch page, the playlist, segment hashes and metadata (JSON), torrents,
    # magnets, trackers (http and wss), the Infohash tags.
    "peertube-create-video.json": [
        (
            f"{TIL}lazy-static/thumbnails/904efceb-0715-476f-b0dc-b5fba6769851.jpg",
            "icon",
            "image/jpeg",
        ),
        (
            f"{TIL}lazy-static/previews/ef6088ee-c83a-4fcf-8be2-58db95ca5135.jpg",
            "icon",
            "image/jpeg",
        ),
        (
            f"{TIL}lazy-static/storyboards/b94d7ec4-97d4-4860-a4aa-220c5cf5beae.jpg",
            "preview",
            "image/jpeg",
        ),
        (
            f"{TIL_HLS}0b870685-4461-47a3-8fac-e5531cd8acf5-1080-fragmented.mp4",
            "rendition",
            "video/mp4",
        ),
        (
            f"{TIL_HLS}339ea14b-0fb9-495b-870e-218a9a6c22f9-360-fragmented.mp4",
            "rendition",
            "video/mp4",
        ),
    ],
    # Older PeerTube: web videos straight in `url`, then the HLS renditions.
    "peertube-update-video-webseed.json": [
        (f"{FRAMA}thumbnails/{FRAMA_ID}.jpg", "icon", "image/jpeg"),
        (f"{FRAMA}webseed/{FRAMA_ID}-240.mp4", "link", "video/mp4"),
        (f"{FRAMA}webseed/{FRAMA_ID}-720.mp4", "link", "video/mp4"),
        (
            f"{FRAMA}streaming-playlists/hls/{FRAMA_ID}/{FRAMA_ID}-240-fragmented.mp4",
            "rendition",
            "video/mp4",
        ),
    ],
    # A channel (Group): avatars and banner come as arrays.
    "peertube-update-channel.json": [
        (
            f"{TIL}lazy-static/avatars/1bbe97f1-d283-4db4-8bdd-e5320564aff9.jpg",
            "avatar",
            "image/jpeg",
        ),
        (
            f"{TIL}lazy-static/avatars/13b0214b-edc0-4c5b-a04d-be648a3a370a.jpg",
            "avatar",
            "image/jpeg",
        ),
        (
            f"{TIL}lazy-static/banners/1a8d6881-30c8-47cb-8576-7af62d869c45.jpg",
            "header",
            "image/jpeg",
        ),
    ],
    "pixelfed-create-note.json": [
        (f"{PX}XyZ123/abcDEF.jpg", "attachment", "image/jpeg"),
        (f"{PX}XyZ124/waves.mp4", "attachment", "video/mp4"),
    ],
    # `mimeType` instead of `mediaType`; the text/html Link is not media; the Audio's
    # own mediaType (text/html, of its content) says nothing about its url.
    "funkwhale-create-channel-audio.json": [
        (f"{FW_CHANNEL}{FW_LISTEN}{FW_UPLOAD}", "link", "audio/ogg"),
        (f"{FW_CHANNEL}media/attachments/3b/24/5f/cover.jpeg", "image", "image/jpeg"),
    ],
    # The album cover comes through the embedded track and album, as `cover` and `image`.
    "funkwhale-create-library-audio.json": [
        (
            f"{FW_LIB}media/albums/covers/2018/10/02/b69d398b5-fdf6-4803-b47c-9bb7098ea57e.jpg",
            "image",
            "image/jpeg",
        ),
        (
            f"{FW_LIB}api/v1/listen/82ece296-6397-4e26-be90-bac5f9990240/"
            "?upload=88f0bc20-d7fd-461d-a641-dd9ac485e096",
            "link",
            "audio/mpeg",
        ),
    ],
    # The preview as a bare URL inside the Document; the torrent Document (a file in
    # `attachment`: its declared type does not hide it, the bytes decide); the quoted
    # Note's own attachment. Not: the text/html Link, the quoted Note's page.
    "friendica-create-note.json": [
        (
            "https://nerdica.net/photo/3f1c5e8b0a2d4f6e8c1b2a3d4e5f6a7b-0.jpg",
            "attachment",
            "image/jpeg",
        ),
        ("https://nerdica.net/photo/preview/320/1234", "image", None),
        ("https://nerdica.net/attach/77", "attachment", "application/x-bittorrent"),
        ("https://lemmy.ml/pictrs/image/6c1d2e3f-quoted.png", "attachment", "image/png"),
    ],
    # The object itself is an Image: its url Links are the files; not the photo page.
    "hubzilla-create-image.json": [
        (f"{HUB}-0.jpg", "link", "image/jpeg"),
        (f"{HUB}-1.jpg", "link", "image/jpeg"),
        (f"{HUB}-2.jpg", "link", "image/jpeg"),
        (f"{HUB}-3.jpg", "link", "image/jpeg"),
    ],
    # The actor document embedded in the activity.
    "kroeg-create-note.json": [
        ("https://puckipedia.com/images/avatar.png", "avatar", "image/png"),
        ("https://puckipedia.com/forum/images/smilies/icon_e_smile.png", "emoji", "image/png"),
    ],
    # The uncropped original inside the avatar, then the cropped avatar.
    "smithereen-update-person.json": [
        (
            f"{SMITH}6QLsOws97AWp5N_osd74C1IC1ijnFopyCBD9MSEeXNQ/q:93/{SMITH_FILE}",
            "avatar",
            "image/jpeg",
        ),
        (
            f"{SMITH}ql_49PQcETAWgY_nC-Qj63H_Oa6FyOAEoWFkUSSkUvQ/c:573:572:nowe:338:362/q:93/"
            f"{SMITH_FILE}",
            "avatar",
            "image/jpeg",
        ),
    ],
    # `image` repeats attachment 0; `preview` is a Note without media; url is the article.
    "wordpress-create-article.json": [
        (f"{WP}Splash-Art2-3.png?fit=980%2C980&#038;ssl=1", "attachment", "image/png"),
        (f"{WP}Splash-Art.jpg?fit=696%2C1024&#038;ssl=1", "attachment", "image/jpeg"),
        (f"{WP}Splash-Art2-3.png?resize=150%2C150&#038;ssl=1", "icon", "image/png"),
    ],
    # A single attachment object with no mediaType.
    "owncast-create-note.json": [
        ("https://owncast.localhost.localdomain/preview.gif?us=KjfNX387gm", "attachment", None),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_activities(name: str) -> None:
    assert found(load(name)) == EXPECTED[name]


def test_every_stored_activity_is_checked() -> None:
    assert {path.name for path in ACTIVITIES.glob("*.json")} == set(EXPECTED)


def test_at_least_eight_server_softwares() -> None:
    softwares = {name.split("-", 1)[0] for name in EXPECTED}
    assert len(softwares) >= 8, softwares


NOT_MEDIA_TAGS = ("Hashtag", "Mention")
NOT_MEDIA_TYPES = (
    "text/html",
    "application/x-bittorrent",
    "application/json",
    "application/x-mpegurl",
)
NOT_MEDIA_RELS = {"metadata", "tracker"}


def _never_media(node: Any, out: set[str]) -> set[str]:
    """URLs the fixtures hold that are certainly not media, found independently of the code."""
    if isinstance(node, list):
        for item in node:
            _never_media(item, out)
    elif isinstance(node, dict):
        kind = node.get("type")
        declared = str(node.get("mediaType") or node.get("mimeType") or "").lower()
        rel = node.get("rel") or []
        if (
            kind in NOT_MEDIA_TAGS
            or declared.startswith(NOT_MEDIA_TYPES)
            or NOT_MEDIA_RELS & set(rel)
        ):
            # A post's own mediaType describes its content, not its url; a file's (a
            # Document's) may lie, and Misskey and GoToSocial sniff the bytes: only a
            # Link's declared type says what it points at.
            keys = ("href", "url") if kind == "Link" else ("href",)
            for key in keys:
                if isinstance(node.get(key), str):
                    out.add(node[key])
        for value in node.values():
            _never_media(value, out)
    elif isinstance(node, str) and node.startswith(("magnet:", "wss:")):
        out.add(node)
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pages_torrents_metadata_tags_are_left_out(name: str) -> None:
    activity = load(name)
    assert not _never_media(activity, set()) & {ref.url for ref in media_refs(activity)}


def test_peertube_non_media_links_are_named_and_left_out() -> None:
    activity = load("peertube-create-video.json")
    urls = {ref.url for ref in media_refs(activity)}
    for left_out in (
        f"{TIL}videos/watch/e7946124-7b72-4ad7-9d22-844a84bb2de1",
        f"{TIL_HLS}2020efb9-9f43-4e37-b268-3470a4bb89cd-master.m3u8",
        f"{TIL_HLS}0c0d34b1-ab46-4fc8-ae02-c97c23bfb2db-segments-sha256.json",
        f"{TIL}api/v1/videos/e7946124-7b72-4ad7-9d22-844a84bb2de1/metadata/729362",
        f"{TIL}lazy-static/torrents/cf3222e4-b9fe-4cb3-8b43-2da8afd83895-1080-hls.torrent",
        f"{TIL}tracker/announce",
        "wss://tilvids.com:443/tracker/socket",
    ):
        assert left_out not in urls
    assert not any(url.startswith("magnet:") for url in urls)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("mastodon-create-note.json", "object.attachment[0].url"),
        ("mastodon-create-note.json", "object.attachment[1].icon.url"),
        ("mastodon-create-note.json", "object.tag[2].icon.url"),
        ("smithereen-update-person.json", "object.icon.image.url"),
        ("peertube-create-video.json", "object.url[1].tag[3].href"),
        ("peertube-create-video.json", "object.preview[0].url[0].href"),
        ("pleroma-create-chat-message.json", "object.attachment.url[0].href"),
        ("lemmy-announce-create-page.json", "object.object.attachment[0].href"),
        ("gotosocial-update-person.json", "object.tag.icon.url"),
        ("kroeg-create-note.json", "actor.icon.url"),
        ("misskey-like-emoji.json", "tag[0].icon.url"),
        ("funkwhale-create-library-audio.json", "object.track.album.cover.href"),
        ("friendica-create-note.json", "object.attachment[0].image"),
        ("friendica-create-note.json", "object.attachment[3].attachment[0].url"),
        ("lemmy-create-page-url.json", "object.url"),
    ],
)
def test_where_names_the_place(name: str, where: str) -> None:
    assert where in [ref.where for ref in media_refs(load(name))]


@pytest.mark.parametrize(
    ("name", "url", "kind"),
    [
        (
            "mastodon-create-note.json",
            f"{MASTO}media_attachments/files/113/306/826/700/000/001/original/jingle.mp3",
            "audio",
        ),
        (  # from type Image; Misskey declares no mediaType for avatars
            "misskey-update-person.json",
            f"{ARK}misskey/webpublic-3f7e93c0-34f5-443c-acc0-f415cb2342b4.jpg",
            "image",
        ),
        (
            "owncast-create-note.json",
            "https://owncast.localhost.localdomain/preview.gif?us=KjfNX387gm",
            "image",
        ),
        ("lemmy-announce-create-page.json", f"{LEMMY}eOtYb9iEiB.png", None),
        ("lemmy-create-page-url.json", f"{LEMMY}US52d9DPvf.jpg", None),
        (
            "peertube-create-video.json",
            f"{TIL_HLS}339ea14b-0fb9-495b-870e-218a9a6c22f9-360-fragmented.mp4",
            "video",
        ),
        ("funkwhale-create-channel-audio.json", f"{FW_CHANNEL}{FW_LISTEN}{FW_UPLOAD}", "audio"),
        ("friendica-create-note.json", "https://nerdica.net/photo/preview/320/1234", None),
    ],
)
def test_declared_kind(name: str, url: str, kind: str | None) -> None:
    assert by_url(load(name))[url].declared_kind == kind


# --- shapes, one rule at a time -------------------------------------------------------------


def note(**fields: Any) -> dict[str, Any]:
    return {
        "type": "Create",
        "actor": "https://a.example/u/1",
        "object": {"type": "Note", **fields},
    }


def test_funkwhale_mime_type_is_read_like_media_type() -> None:
    audio = {
        "type": "Audio",
        "url": [
            {"type": "Link", "mimeType": "audio/ogg", "href": "https://fw.example/listen/1"},
            {"type": "Link", "mimeType": "text/html", "href": "https://fw.example/tracks/1"},
        ],
    }
    refs = media_refs({"type": "Create", "object": audio})
    assert [(r.url, r.role, r.media_type, r.declared_kind) for r in refs] == [
        ("https://fw.example/listen/1", "link", "audio/ogg", "audio"),
    ]


def test_announce_of_an_embedded_create() -> None:
    create = note(attachment=[{"type": "Document", "url": "https://a.example/m/1.png"}])
    activity = {"type": "Announce", "actor": "https://b.example/c/g", "object": create}
    assert [(r.url, r.where) for r in media_refs(activity)] == [
        ("https://a.example/m/1.png", "object.object.attachment[0].url"),
    ]


def test_announce_of_an_object_id_contributes_nothing() -> None:
    # Mastodon, Misskey, PeerTube announce by id; the id is a post, not media.
    activity = {"type": "Announce", "object": "https://a.example/users/x/statuses/1"}
    assert media_refs(activity) == []
    assert media_refs({"type": "Announce", "object": ["https://a.example/notes/1"]}) == []


@pytest.mark.parametrize("kind", ["Person", "Service", "Group", "Organization", "Application"])
@pytest.mark.parametrize("verb", ["Update", "Create"])
def test_actor_documents_give_avatar_and_header(verb: str, kind: str) -> None:
    actor = {
        "type": kind,
        "icon": "https://a.example/avatar.png",  # a bare URL
        "image": [{"type": "Image", "url": "https://a.example/header.png"}],
        "url": "https://a.example/@someone",  # the profile page
    }
    assert found({"type": verb, "object": actor}) == [
        ("https://a.example/avatar.png", "avatar", None),
        ("https://a.example/header.png", "header", None),
    ]


def test_actor_type_in_a_list_of_types() -> None:
    actor = {"type": ["Person", "vcard:Individual"], "icon": {"url": "https://a.example/a.png"}}
    assert found({"type": "Update", "object": actor}) == [
        ("https://a.example/a.png", "avatar", None)
    ]


def test_icon_and_image_of_other_objects_keep_their_names() -> None:
    obj = {
        "type": "Video",
        "icon": {
            "type": "Image",
            "url": "https://a.example/t.jpg",
            "image": "https://a.example/o.jpg",
        },
        "thumbnail": "https://a.example/th.jpg",
        "preview": {"type": "Link", "href": "https://a.example/p.webm", "mediaType": "video/webm"},
    }
    assert found({"type": "Create", "object": obj}) == [
        ("https://a.example/t.jpg", "icon", None),
        ("https://a.example/o.jpg", "image", None),
        ("https://a.example/th.jpg", "thumbnail", None),
        ("https://a.example/p.webm", "preview", "video/webm"),
    ]


def test_url_as_a_link_and_as_an_array_of_links() -> None:
    activity = note(
        attachment=[
            {
                "type": "Document",
                "mediaType": "image/png",
                "url": {"type": "Link", "href": "https://a.example/1.png"},
            },
            {
                "type": "Image",
                "url": [
                    {"type": "Link", "href": "https://a.example/2.html", "mediaType": "text/html"},
                    {"type": "Link", "href": "https://a.example/2.jpg", "mediaType": "image/jpeg"},
                    {"type": "Link", "href": "https://a.example/2-small"},
                ],
            },
            {"type": "Link", "href": "https://a.example/3", "mediaType": "IMAGE/GIF; q=1"},
        ]
    )
    refs = media_refs(activity)
    assert [(r.url, r.where, r.media_type, r.declared_kind) for r in refs] == [
        # A Link without mediaType takes the Document's.
        ("https://a.example/1.png", "object.attachment[0].url.href", "image/png", "image"),
        ("https://a.example/2.jpg", "object.attachment[1].url[1].href", "image/jpeg", "image"),
        # A Link without mediaType inside an Image: the type says image, no media type.
        ("https://a.example/2-small", "object.attachment[1].url[2].href", None, "image"),
        ("https://a.example/3", "object.attachment[2].href", "image/gif", "image"),
    ]


def test_a_note_url_is_its_page_unless_a_link_declares_media() -> None:
    activity = note(
        url=[
            "https://a.example/@x/1",
            {"type": "Link", "href": "https://a.example/@x/1.html", "mediaType": "text/html"},
            {"type": "Link", "href": "https://a.example/@x/1/embed"},
            {"type": "Link", "href": "https://a.example/media/1.mp4", "mediaType": "video/mp4"},
        ]
    )
    assert found(activity) == [("https://a.example/media/1.mp4", "link", "video/mp4")]


def test_page_url_as_a_link() -> None:
    page = {
        "type": "Page",
        "mediaType": "text/html",
        "url": {"type": "Link", "href": "https://a.example/pic.webp", "mediaType": "image/webp"},
    }
    assert found({"type": "Create", "object": page}) == [
        ("https://a.example/pic.webp", "page-url", "image/webp"),
    ]


def test_hashtags_mentions_and_links_in_tag_are_not_media() -> None:
    # FEP-e232 quote link as Friendica and Akkoma send it (Pleroma's test/fixtures/fep-e232.json).
    activity = note(
        tag=[
            {"type": "Hashtag", "href": "https://a.example/tags/cats", "name": "#cats"},
            {"type": "Mention", "href": "https://b.example/users/bob", "name": "@bob@b.example"},
            {
                "type": "Link",
                "href": "https://a.example/objects/9",
                "mediaType": 'application/ld+json; profile="https://www.w3.org/ns/activitystreams"',
                "rel": "https://misskey-hub.net/ns#_misskey_quote",
            },
            {"type": "Link", "href": "https://a.example/some.png"},
            {"type": "Image", "url": "https://a.example/other.png"},
        ]
    )
    assert media_refs(activity) == []


def test_a_note_in_preview_or_attachment_is_walked_as_an_object() -> None:
    # NodeBB and WordPress send a Note as `preview`; Friendica quotes a Note in `attachment`.
    preview = {
        "type": "Note",
        "url": "https://forum.example/post/1",
        "attachment": [{"type": "Image", "url": "https://forum.example/files/1.png"}],
    }
    activity = {"type": "Create", "object": {"type": "Article", "preview": preview}}
    assert [(r.url, r.role, r.where) for r in media_refs(activity)] == [
        ("https://forum.example/files/1.png", "attachment", "object.preview.attachment[0].url"),
    ]


@pytest.mark.parametrize(
    "media_type",
    [
        "text/html",
        "TEXT/HTML; charset=utf-8",
        "application/xhtml+xml",
        "application/x-bittorrent",
        "application/x-bittorrent;x-scheme-handler/magnet",
        "application/json",
        'application/ld+json; profile="https://www.w3.org/ns/activitystreams"',
        "application/activity+json",
        "application/x-mpegURL",
        "application/vnd.apple.mpegurl",
        "application/rss+xml",
    ],
)
def test_declared_non_media_is_left_out(media_type: str) -> None:
    # A Link in `attachment` (Lemmy's and Friendica's link posts), a Link in a Note's own
    # `url`, a PeerTube watch page: the declared type is believed.
    activity = note(
        attachment=[{"type": "Link", "mediaType": media_type, "href": "https://a.example/f"}],
        url=[{"type": "Link", "mediaType": media_type, "href": "https://a.example/g"}],
    )
    video = {
        "type": "Video",
        "url": [{"type": "Link", "mediaType": media_type, "href": "https://a.example/watch/1"}],
    }
    page = {
        "type": "Page",
        "url": {"type": "Link", "mediaType": media_type, "href": "https://a.example/p"},
    }
    assert media_refs(activity) == []
    assert media_refs({"type": "Create", "object": video}) == []
    assert media_refs({"type": "Create", "object": page}) == []


@pytest.mark.parametrize("slot", ["attachment", "icon", "image", "emoji"])
@pytest.mark.parametrize(
    "media_type",
    ["text/html", "application/json", "application/activity+json", "application/x-mpegURL"],
)
def test_a_file_declaring_a_non_media_type_is_still_found(slot: str, media_type: str) -> None:
    # Misskey and GoToSocial download a Document whatever it declares and sniff the
    # bytes, so the declared type must not hide it: the fetcher decides.
    file = {"type": "Document", "mediaType": media_type, "url": "https://a.example/f"}
    fields = {"tag": [{"type": "Emoji", "icon": file}]} if slot == "emoji" else {slot: [file]}
    assert found(note(**fields)) == [("https://a.example/f", slot, media_type.lower())]


def test_a_declared_type_a_link_would_inherit_is_not_believed() -> None:
    # The Link declares nothing itself; the Document's "text/html" must not hide it.
    attachment = {
        "type": "Document",
        "mediaType": "text/html",
        "url": {"type": "Link", "href": "https://a.example/f.png"},
    }
    assert found(note(attachment=[attachment])) == [
        ("https://a.example/f.png", "attachment", "text/html")
    ]


def test_an_actors_avatar_declaring_a_non_media_type_is_still_found() -> None:
    actor = {
        "type": "Person",
        "icon": {"type": "Image", "mediaType": "text/html", "url": "https://a.example/a"},
    }
    assert found({"type": "Update", "object": actor}) == [
        ("https://a.example/a", "avatar", "text/html")
    ]


@pytest.mark.parametrize(
    "rel", ["metadata", ["metadata", "video/mp4"], ["tracker", "http"], "TRACKER"]
)
def test_metadata_and_tracker_links_are_left_out(rel: Any) -> None:
    video = {"type": "Video", "url": [{"type": "Link", "rel": rel, "href": "https://a.example/x"}]}
    assert media_refs({"type": "Create", "object": video}) == []


def test_unknown_declared_types_stay_for_the_fetcher_to_sniff() -> None:
    # Only what is certainly not media is left out; a wrong label must not hide a picture.
    activity = note(
        attachment=[
            {
                "type": "Document",
                "mediaType": "application/octet-stream",
                "url": "https://a.example/1",
            },
            {"type": "Document", "mediaType": "", "url": "https://a.example/2"},
            {"type": "Document", "mediaType": ["image/png"], "url": "https://a.example/3"},
        ]
    )
    assert found(activity) == [
        ("https://a.example/1", "attachment", "application/octet-stream"),
        ("https://a.example/2", "attachment", None),
        ("https://a.example/3", "attachment", None),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "magnet:?xt=urn:btih:f9b4ddffa454ad6a7d5d7000d307c33f84aba1d1",
        "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "wss://a.example/tracker/socket",
        "ftp://a.example/a.png",
        "javascript:alert(1)",
        "/media/relative.png",
        "//a.example/scheme-relative.png",
        "https://",
        "http://[::1/broken.png",
        "",
        "   ",
    ],
)
def test_only_absolute_http_urls(url: str) -> None:
    assert media_refs(note(attachment=[{"type": "Image", "url": url}])) == []


def test_urls_are_stripped_and_otherwise_kept_as_found() -> None:
    activity = note(
        attachment=[
            {"type": "Image", "url": "  https://a.example/a.png\n"},
            {"type": "Image", "url": "HTTPS://A.EXAMPLE/B.PNG"},
        ]
    )
    assert [ref.url for ref in media_refs(activity)] == [
        "https://a.example/a.png",
        "HTTPS://A.EXAMPLE/B.PNG",
    ]


# --- dedup and bounds -----------------------------------------------------------------------


def test_a_url_is_kept_once_at_its_first_place() -> None:
    url = "https://a.example/same.png"
    activity = note(
        attachment=[{"type": "Document", "mediaType": "image/png", "url": url}],
        image={"type": "Image", "url": url},
        tag=[{"type": "Emoji", "name": ":same:", "icon": {"type": "Image", "url": f" {url} "}}],
        icon=[url, url],
    )
    assert [(r.url, r.where, r.role) for r in media_refs(activity)] == [
        (url, "object.attachment[0].url", "attachment"),
    ]


def test_document_order_is_kept() -> None:
    activity = note(
        tag=[{"type": "Emoji", "icon": {"url": "https://a.example/e.png"}}],
        attachment=[{"url": "https://a.example/2.png"}, {"url": "https://a.example/1.png"}],
    )
    assert [r.url for r in media_refs(activity)] == [
        "https://a.example/e.png",
        "https://a.example/2.png",
        "https://a.example/1.png",
    ]


def test_max_refs_bounds_a_hostile_activity() -> None:
    attachments = [{"type": "Image", "url": f"https://a.example/{i}.png"} for i in range(10_000)]
    refs = media_refs(note(attachment=attachments))
    assert len(refs) == 64
    assert [r.url for r in refs] == [f"https://a.example/{i}.png" for i in range(64)]
    assert len(media_refs(note(attachment=attachments), max_refs=3)) == 3
    assert media_refs(note(attachment=attachments), max_refs=0) == []


def test_duplicates_do_not_count_against_max_refs() -> None:
    attachments = [{"url": "https://a.example/same.png"}] * 100 + [
        {"url": "https://a.example/2.png"}
    ]
    assert [r.url for r in media_refs(note(attachment=attachments), max_refs=2)] == [
        "https://a.example/same.png",
        "https://a.example/2.png",
    ]


def announced(levels: int) -> dict[str, Any]:
    """A Note with one attachment, wrapped in `levels` Announces."""
    activity: dict[str, Any] = {
        "type": "Note",
        "attachment": [{"url": "https://a.example/deep.png"}],
    }
    for _ in range(levels):
        activity = {"type": "Announce", "object": activity}
    return activity


def test_max_depth_bounds_the_walk() -> None:
    assert [r.where for r in media_refs(announced(2))] == ["object.object.attachment[0].url"]
    # The Note at depth 6, its attachment at 7: within the default bound of 8.
    assert len(media_refs(announced(6))) == 1
    assert media_refs(announced(20)) == []
    assert len(media_refs(announced(20), max_depth=30)) == 1
    assert media_refs(announced(2), max_depth=1) == []


def test_very_deep_documents_do_not_exhaust_the_stack() -> None:
    deep = announced(50_000)
    nested_icons: dict[str, Any] = {"url": "https://a.example/i.png"}
    for _ in range(50_000):
        nested_icons = {"type": "Image", "icon": nested_icons}
    assert media_refs(deep) == []
    assert media_refs({"type": "Create", "object": {"type": "Note", "icon": nested_icons}}) == []


# --- odd JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "activity", [None, 5, "https://a.example/x.png", [], ["https://a.example/x.png"]]
)
def test_an_activity_that_is_not_an_object_gives_nothing(activity: Any) -> None:
    assert media_refs(activity) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"attachment": None},
        {"attachment": 5},
        {"attachment": True},
        {"attachment": [None, 1, 2.5, False, {}, [], [["https://a.example/nested.png"]]]},
        {"attachment": [{"url": None}, {"url": 7}, {"url": {}}, {"href": [[]]}, {"url": [None]}]},
        {"attachment": {"type": 5, "url": ["not a url", 3]}},
        {"icon": [[{"url": "https://a.example/nested.png"}]]},
        {"image": {"type": {"nested": "Image"}, "url": False}},
        {"tag": "#cats"},
        {"tag": [None, 3, "Emoji", {"type": "Emoji"}, {"type": "Emoji", "icon": None}]},
        {"tag": {"type": "Emoji", "icon": [[]]}},
        {"url": 42},
        {"url": {"href": None}},
        {"type": "Video", "url": [{"type": "Link", "href": 5, "tag": 7, "rel": 3}]},
        {"type": ["Video", 5, None], "url": {"tag": [None, {"href": {}}]}},
        {"attachment": [{"type": "Document", "mediaType": 5, "mimeType": None, "url": "x"}]},
        {"attachment": [{"type": "Link", "rel": [None, 1], "href": "https://a.example/ok.png"}]},
    ],
)
def test_odd_values_are_skipped_never_raised_on(fields: dict[str, Any]) -> None:
    refs = media_refs(note(**fields))
    assert all(ref.url.startswith("https://a.example/ok") for ref in refs)


def test_odd_values_do_not_hide_good_ones() -> None:
    activity = {
        "type": "Create",
        "actor": 17,
        "object": {
            "type": None,
            "attachment": [None, 3, [], {"url": None}, {"url": "https://a.example/good.png"}],
            "tag": [7, {"type": "Emoji", "icon": "https://a.example/emoji.png"}],
            "object": 42,
        },
        "_misskey_reaction": {"weird": ["https://a.example/not-a-slot.png"]},
    }
    assert found(activity) == [
        ("https://a.example/good.png", "attachment", None),
        ("https://a.example/emoji.png", "emoji", None),
    ]


def test_unknown_keys_are_ignored() -> None:
    activity = note(
        _source="where this shape comes from",
        quoteUrl="https://a.example/notes/1",
        _misskey_quote="https://a.example/notes/1",
        content='<img src="https://a.example/inline.png">',
        source={"content": "![x](https://a.example/inline.png)", "mediaType": "text/markdown"},
    )
    assert media_refs(activity) == []


# --- the public surface ---------------------------------------------------------------------


def test_exported_members() -> None:
    assert refs_module.__all__ == ["MediaRef", "media_refs"]


def test_media_ref_is_a_frozen_value() -> None:
    ref = MediaRef("https://a.example/a.png", "object.icon", "icon", None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.url = "https://b.example/"  # type: ignore[misc]
    assert ref == MediaRef("https://a.example/a.png", "object.icon", "icon", None, None)
    assert not hasattr(ref, "__dict__")
