"""What some bytes are: ``sniff`` reads the kind of media from the bytes (magic
numbers), never from the URL or the Content-Type the origin sent: both are the
sender's to choose.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Kind", "sniff"]

Kind = Literal["image", "video", "audio", "unknown"]


def sniff(data: bytes) -> tuple[Kind, str | None]:
    """``(kind, mime)`` from the first bytes; ``("unknown", None)`` if unrecognised."""
    head = data[:64]
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "image/png"  # APNG too
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "image/gif"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return _RIFF.get(head[8:12], ("unknown", None))
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image", "image/tiff"  # classic and BigTIFF
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "image", "image/bmp"
    if head[4:8] == b"ftyp":
        return _iso_media(data)
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "video", "video/quicktime"  # QuickTime from before the ftyp box
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "image", "image/jxl"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML; its DocType says which flavour
        return ("video", "video/webm") if b"webm" in head else ("video", "video/x-matroska")
    if head[:4] == b"OggS":
        # The first page holds the first stream's identification header.
        if any(codec in head for codec in (b"\x80theora", b"OVP80", b"BBCD\x00", b"\x01video")):
            return "video", "video/ogg"
        return "audio", "audio/ogg"
    if head[:4] == b"fLaC":
        return "audio", "audio/flac"
    if head[:3] == b"ID3":
        return "audio", "audio/mpeg"
    if head[:4] == b"\x00\x00\x01\xba":
        return "video", "video/mpeg"
    if len(data) > 376 and data[0] == data[188] == data[376] == 0x47:
        return "video", "video/mp2t"  # a sync byte every 188 bytes
    return _mpeg_audio(head)


_RIFF: dict[bytes, tuple[Kind, str | None]] = {
    b"WEBP": ("image", "image/webp"),
    b"WAVE": ("audio", "audio/wav"),
    b"AVI ": ("video", "video/x-msvideo"),
}

# "BM" alone starts too much text; the DIB header's size pins a bitmap down.
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}

# ISO base media file brands (ftyp box), https://mp4ra.org/registered-types/brands.
# mif1/msf1 only say "HEIF"; a compatible avif or heic brand says which codec.
_IMAGE_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"hevc": "image/heic-sequence",
    b"hevx": "image/heic-sequence",
    b"mif1": "image/heif",
    b"msf1": "image/heif-sequence",
}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}


def _iso_media(data: bytes) -> tuple[Kind, str | None]:
    size = int.from_bytes(data[:4], "big")
    major = data[8:12]
    listed = data[16 : min(max(size, 16), 256)]
    brands = {major} | {listed[i : i + 4] for i in range(0, len(listed) - 3, 4)}
    for brand in (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"):
        if brand in brands:
            return "image", _IMAGE_BRANDS[brand]
    if major in _IMAGE_BRANDS:
        return "image", _IMAGE_BRANDS[major]
    if major in _AUDIO_BRANDS:
        return "audio", "audio/mp4"
    if major == b"qt  ":
        return "video", "video/quicktime"
    return "video", "video/mp4"  # isom, iso2-6, mp41, mp42, avc1, dash, 3gp*, M4V...


def _mpeg_audio(head: bytes) -> tuple[Kind, str | None]:
    """An MPEG audio frame header (MP3 without ID3 tag) or an ADTS one (raw AAC)."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return "unknown", None
    if head[1] & 0xF6 == 0xF0:  # ADTS: 12-bit sync, then layer 00
        return "audio", "audio/aac"
    version, layer = (head[1] >> 3) & 3, (head[1] >> 1) & 3
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 3
    if version != 1 and layer != 0 and bitrate != 15 and rate != 3:  # none reserved
        return "audio", "audio/mpeg"
    return "unknown", None
