"""Media: one fetched (or remembered) file, as every check sees it.

The hashes are by hash kind name, computed by the registered kinds
(``relay.hashing``), so what reads a Media (the banks' matcher, any other
``relay.matcher.Matcher``) never needs to know which kinds exist.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from relay.hashing import KINDS
from relay.media.hashes import Hashes
from relay.media.refs import MediaRef
from relay.media.sniff import Kind, sniff

if TYPE_CHECKING:  # relay.hashing.vpdq reads videos with relay.media.video
    from relay.hashing.vpdq import VpdqHash

__all__ = ["Media"]


@dataclass(frozen=True, slots=True)
class Media:
    """One file's bytes (in memory only), what it is, its hashes, and how it was got."""

    #: The bytes, never written to disk nor logged; None when known from the cache.
    data: bytes | None = field(repr=False, compare=False)
    sha256: str
    """The file's identity: what the cache and the evidence key on."""
    kind: Kind
    """Sniffed from the bytes: image, video, audio or unknown."""
    mime: str | None
    hashes: Mapping[str, tuple[str, ...]]
    """By hash kind name: every value of that kind worth matching (PDQ: each frame of
    quality >= its minimum)."""
    variants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """By hash kind name: what dihedral banks also try ([0] as is, then rotations and
    flips; the index is the variant number a match reports)."""
    ref: MediaRef | None = None
    cached: bool = False
    seconds: float | None = None
    """Fetching and hashing it took this long (None: not measured)."""
    size: int | None = None
    """Bytes fetched (None: known from the cache)."""
    width: int | None = None
    height: int | None = None
    frames: int = 0
    quality: int | None = None
    """The first frame's PDQ quality (0-100), None when not a decoded picture."""
    vpdq: VpdqHash | None = None
    """A video's vPDQ hash (not a registered kind: a list of frames, matched as
    shares of them by the banks' matcher); None when not a video that was read."""

    @property
    def url(self) -> str | None:
        return self.ref.url if self.ref is not None else None

    @classmethod
    def of(cls, data: bytes, decoded: Hashes | None = None, **facts: Any) -> Media:
        """``data`` hashed by every registered kind; ``decoded`` is the hasher's result
        (None: not decoded, so exact kinds only)."""
        hashes: dict[str, tuple[str, ...]] = {}
        variants: dict[str, tuple[str, ...]] = {}
        for name, hash_kind in KINDS.items():
            values = hash_kind.hash(data, decoded)
            if values:
                hashes[name] = values
            turned = hash_kind.variants(decoded)
            if turned:
                variants[name] = turned
        if decoded is not None:
            sha256, kind, mime = decoded.sha256, decoded.kind, decoded.mime
            first = decoded.pdq[0] if decoded.pdq else None
            facts = {
                "width": decoded.width,
                "height": decoded.height,
                "frames": decoded.frames,
                "quality": first.quality if first else None,
                "vpdq": decoded.vpdq,
                **facts,
            }
        else:
            sha256 = hashlib.sha256(data).hexdigest()
            kind, mime = sniff(data)
        return cls(
            data,
            sha256,
            kind,
            mime,
            MappingProxyType(hashes),
            MappingProxyType(variants),
            size=len(data),
            **facts,
        )

    def remembered(self) -> Media:
        """What the cache keeps: no bytes, no reference, no timing."""
        return replace(self, data=None, ref=None, seconds=None, cached=True)

    def facts(self) -> dict[str, object]:
        """For the ``hashed`` signal: what was looked at, JSON-serialisable."""
        return {
            "kind": self.kind,
            "mime": self.mime,
            "sha256": self.sha256,
            **{name: self.hashes.get(name, (None,))[0] for name in KINDS},
            "quality": self.quality,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "bytes": self.size,
            "cached": self.cached,
            "seconds": self.seconds,
            **(self._video() if self.vpdq is not None else {}),
        }

    def _video(self) -> dict[str, object]:
        assert self.vpdq is not None
        return {
            "vpdq_frames": len(self.vpdq.frames),
            "vpdq_usable": len(self.vpdq.usable()),
            "vpdq_complete": self.vpdq.complete,
        }
