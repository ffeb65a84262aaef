"""Where each table and key of a TOML document is written.

tomllib keeps no positions, so a problem found in the parsed data is placed back
on its line by re-reading the text; ``dotted`` names the key as an admin writes it.
"""

from __future__ import annotations

import contextlib
import json
import re
import tomllib
from collections.abc import Mapping

__all__ = ["KeyPath", "dotted", "line_of", "locate_keys"]

# A key's place in the document: table and key names, and indexes into arrays.
KeyPath = tuple[str | int, ...]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\r\n]*")


def locate_keys(text: str) -> dict[KeyPath, int]:
    """Map each table and key of a TOML document to the 1-based line defining it.

    tomllib keeps no positions, so this re-reads the text: table headers,
    arrays of tables (counted per array), dotted keys, inline tables and the
    elements of arrays. It expects text tomllib accepted; for anything else it
    returns what it found.
    """
    locator = _KeyLocator(text)
    # Line numbers help; a bug in the locator must not stop a check.
    with contextlib.suppress(Exception):
        locator.run()
    return locator.found


class _KeyLocator:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.found: dict[KeyPath, int] = {}
        self.arrays: dict[KeyPath, int] = {}  # array of tables -> elements so far

    def run(self) -> None:
        text = self.text
        table: KeyPath = ()
        while self.pos < len(text):
            start = self.pos
            self.skip_blank()
            char = text[self.pos : self.pos + 1]
            if char in ("\n", "\r"):
                self.move_to(self.pos + 1)
                continue
            if char == "[":
                table = self.read_header()
            elif char and char != "#":
                keys = self.read_key()
                self.skip_blank()
                if keys and text.startswith("=", self.pos):
                    self.move_to(self.pos + 1)
                    self.skip_blank()
                    path = (*table, *keys)
                    self.mark_all(path)
                    self.read_value(path)
            end = text.find("\n", self.pos)  # the rest: "]", comments
            self.move_to(len(text) if end < 0 else end)
            if self.pos == start:
                self.move_to(self.pos + 1)

    def read_header(self) -> KeyPath:
        if self.text.startswith("[[", self.pos):
            self.move_to(self.pos + 2)
            keys = self.read_key()
            array = (*self.resolve(keys[:-1]), *keys[-1:])
            index = self.arrays.get(array, 0)
            self.arrays[array] = index + 1
            table: KeyPath = (*array, index)
        else:
            self.move_to(self.pos + 1)
            table = self.resolve(self.read_key())
        self.mark_all(table)
        return table

    def resolve(self, keys: tuple[str, ...]) -> KeyPath:
        """Insert the index of the latest element after each array of tables."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            count = self.arrays.get(path)
            if count:
                path = (*path, count - 1)
        return path

    def mark_all(self, path: KeyPath) -> None:
        for end in range(1, len(path) + 1):
            self.found.setdefault(path[:end], self.line)

    def move_to(self, pos: int) -> None:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos

    def skip_blank(self) -> None:
        while self.text[self.pos : self.pos + 1] in (" ", "\t"):
            self.pos += 1

    def skip_space(self) -> None:
        """Skip whitespace, newlines and comments, as between array elements."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.move_to(self.pos + 1)
            elif char == "#":
                end = text.find("\n", self.pos)
                self.move_to(len(text) if end < 0 else end)
            else:
                return

    def read_key(self) -> tuple[str, ...]:
        text, keys = self.text, []
        while True:
            self.skip_blank()
            char = text[self.pos : self.pos + 1]
            if char == '"':
                end = self.basic_string_end(self.pos)
                keys.append(_decode_basic(text[self.pos : end]))
            elif char == "'":
                end = text.find("'", self.pos + 1) + 1 or len(text)
                keys.append(text[self.pos + 1 : end - 1])
            else:
                match = _BARE_KEY.match(text, self.pos)
                if not match:
                    return tuple(keys)
                end = match.end()
                keys.append(match.group())
            self.move_to(end)
            self.skip_blank()
            if not text.startswith(".", self.pos):
                return tuple(keys)
            self.move_to(self.pos + 1)

    def basic_string_end(self, pos: int) -> int:
        """The index just after the basic string opening at ``pos``."""
        text, i = self.text, pos + 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
            elif text[i] == '"':
                return i + 1
            elif text[i] == "\n":
                return i
            else:
                i += 1
        return len(text)

    def multiline_end(self, pos: int, quote: str) -> int:
        """The index just after the multi-line string opening at ``pos``."""
        text, i = self.text, pos + 3
        while i < len(text):
            if quote == '"' and text[i] == "\\":
                i += 2
            elif text.startswith(quote * 3, i):
                run = 3
                while run < 5 and text.startswith(quote, i + run):
                    run += 1  # up to two quotes may end the content
                return i + run
            else:
                i += 1
        return len(text)

    def read_value(self, path: KeyPath) -> None:
        text, pos = self.text, self.pos
        char = text[pos : pos + 1]
        if text.startswith('"""', pos) or text.startswith("'''", pos):
            self.move_to(self.multiline_end(pos, char))
        elif char == '"':
            self.move_to(self.basic_string_end(pos))
        elif char == "'":
            self.move_to(text.find("'", pos + 1) + 1 or len(text))
        elif char == "[":
            self.read_array(path)
        elif char == "{":
            self.read_inline_table(path)
        else:
            match = _SCALAR.match(text, pos)
            self.move_to(match.end() if match else pos)

    def read_array(self, path: KeyPath) -> None:
        self.move_to(self.pos + 1)
        index = 0
        while self.pos < len(self.text):
            self.skip_space()
            char = self.text[self.pos : self.pos + 1]
            if char in ("]", ""):
                self.move_to(self.pos + 1)
                return
            if char == ",":
                self.move_to(self.pos + 1)
                continue
            start = self.pos
            item = (*path, index)
            self.mark_all(item)
            self.read_value(item)
            index += 1
            if self.pos == start:
                self.move_to(self.pos + 1)

    def read_inline_table(self, path: KeyPath) -> None:
        self.move_to(self.pos + 1)
        while self.pos < len(self.text):
            self.skip_space()
            char = self.text[self.pos : self.pos + 1]
            if char in ("}", ""):
                self.move_to(self.pos + 1)
                return
            if char == ",":
                self.move_to(self.pos + 1)
                continue
            keys = self.read_key()
            self.skip_blank()
            if not keys or not self.text.startswith("=", self.pos):
                self.move_to(self.pos + 1)
                continue
            self.move_to(self.pos + 1)
            self.skip_blank()
            key_path = (*path, *keys)
            self.mark_all(key_path)
            self.read_value(key_path)


def _decode_basic(quoted: str) -> str:
    try:
        return str(tomllib.loads(f"k = {quoted}")["k"])
    except tomllib.TOMLDecodeError:
        return quoted[1:-1]


def dotted(path: KeyPath) -> str:
    """``("bank", 0, "name")`` -> ``bank[0].name``; odd key names are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


def line_of(found: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, else of its nearest enclosing table that is written down."""
    for end in range(len(path), 0, -1):
        line = found.get(path[:end])
        if line:
            return line
    return None
