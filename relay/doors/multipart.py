"""The parts of a multipart/form-data body, read from bytes already in memory.

The upload door reads a body whole (up to its limit) before it decides, so that
what it forwards is exactly what it checked; splitting those bytes in place needs
no second stream and no copy beyond the parts themselves. Only what a check needs
is parsed: each part's form name, file name, Content-Type and bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message

__all__ = ["MultipartError", "Part", "boundary", "parts"]


class MultipartError(ValueError):
    """The body is not the multipart/form-data its Content-Type says it is."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes = field(repr=False)  # never in a repr, so never in a log


def _header(value: str) -> Message:
    message = Message()
    message["Content-Type"] = value
    return message


def boundary(content_type: str) -> str | None:
    """The boundary of a multipart/form-data Content-Type; None for any other type."""
    message = _header(content_type)
    if message.get_content_type() != "multipart/form-data":
        return None
    value = message.get_param("boundary")
    return value if isinstance(value, str) and value else None


def parts(body: bytes, boundary: str, *, max_parts: int = 64) -> list[Part]:
    """The parts of ``body`` (RFC 7578), in order; MultipartError if it is malformed or
    has more than ``max_parts`` parts."""
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("the multipart body has no part")
    found: list[Part] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):  # the closing delimiter
            return found
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise MultipartError("the multipart body ends inside a delimiter line")
        headers_end = body.find(b"\r\n\r\n", line_end)
        if headers_end < 0:
            raise MultipartError("a multipart part has no end of headers")
        end = body.find(b"\r\n" + delimiter, headers_end + 4)
        if end < 0:
            raise MultipartError("a multipart part is not closed by its boundary")
        if len(found) >= max_parts:
            raise MultipartError(f"more than {max_parts} multipart parts")
        headers = _part_headers(body[line_end + 2 : headers_end])
        found.append(_part(headers, body[headers_end + 4 : end]))
        position = end + 2 + len(delimiter)


def _part_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers


def _part(headers: dict[str, str], data: bytes) -> Part:
    disposition = Message()
    disposition["Content-Disposition"] = headers.get("content-disposition", "")
    name = disposition.get_param("name", header="content-disposition")
    filename = disposition.get_filename()
    content_type = headers.get("content-type")
    return Part(
        name if isinstance(name, str) else None,
        filename,
        content_type,
        data,
    )
