"""Hash list files, the lists admins get: ThreatExchange "local file" lines
(``pdq <hex>``), bare hashes of one kind, CSV with a header, and vPDQ hashes of
videos (vpdq's file format, read as the PDQ hashes of their frames); and
``BankError``, which every bank operation raises.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

from relay.errors import SluiceError
from relay.hashing import KINDS, by_alias
from relay.hashing.vpdq import QUALITY as VPDQ_QUALITY  # frames below it make no entry

__all__ = ["BankError", "Entry", "parse_hash_file", "read_hash_file"]

#: (kind, normalised hex value, note)
Entry = tuple[str, str, str | None]

_CSV_HASH = ("hash", "value", "signal_value", "signal", "indicator")
_CSV_TYPE = ("type", "kind", "signal_type", "hash_type", "indicator_type")
_CSV_NOTE = ("note", "notes", "comment", "description")
_CSV_EXTRA = ("id", "category")  # kept in the note, as id=... category=...
_MAX_PROBLEMS = 20  # listed in one error; the rest are counted
# vpdq's file format: frame_number,quality,pdq_hex,timestamp_seconds (relay.hashing.vpdq).
_VPDQ_LINE = re.compile(
    r"\s*\d{1,12}\s*,\s*\d{1,3}\s*,\s*[0-9a-fA-F]{64}\s*,\s*[0-9.eE+-]{1,24}\s*"
)


class BankError(SluiceError):
    """A bank operation was refused, or a hash list is malformed (every problem listed)."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:_MAX_PROBLEMS]
        more = len(self.problems) - len(shown)
        super().__init__("\n".join(shown) + (f"\n… and {more} more" if more > 0 else ""))


def read_hash_file(path: str | Path, *, default_kind: str | None = None) -> list[Entry]:
    """``parse_hash_file`` on a file; BankError if it cannot be read or is not UTF-8."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BankError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BankError(f"{source}:{line}: not UTF-8 text") from exc
    return parse_hash_file(text, default_kind=default_kind, source=source)


def parse_hash_file(
    text: str, *, default_kind: str | None = None, source: str = "<text>"
) -> list[Entry]:
    """Every entry of a hash list, or BankError naming ``source:line`` of each bad line.

    Accepted: ThreatExchange local-file lines ``<type> <hash> [anything]``, bare
    ``<hash> [anything]`` when ``default_kind`` is given, and CSV whose first line is a
    header naming a hash column (``hash``, ``value``, ``signal_value``) and optionally
    a type (``type``, ``kind``, ``signal_type``) and a ``note``; and vpdq's files
    (``frame_number,quality,pdq_hex,timestamp``, told by their first line), each frame
    of quality >= ``VPDQ_QUALITY`` a ``pdq`` entry. Blank lines and lines starting
    with ``#`` are skipped. Nothing is returned unless every line is good,
    so an import is all or nothing.
    """
    if default_kind is not None and default_kind not in KINDS:
        raise BankError(f"unknown hash type `{default_kind}` (known: {', '.join(sorted(KINDS))})")
    lines = text.removeprefix("\ufeff").splitlines()
    first = next((i for i, line in enumerate(lines) if _is_content(line)), None)
    if first is None:
        return []
    problems: list[str] = []
    if _VPDQ_LINE.fullmatch(lines[first]) and default_kind in (None, "pdq"):
        entries = _parse_vpdq(lines, source, problems)
    elif "," in lines[first] and not _is_hash_line(lines[first], default_kind):
        entries = _parse_csv(lines, first, default_kind, source, problems)
    else:
        entries = _parse_lines(lines, default_kind, source, problems)
    if problems:
        raise BankError(problems)
    return entries


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _is_hash_line(line: str, default_kind: str | None) -> bool:
    """Whether a line reads as ``<type> <hash>`` or a bare hash rather than a CSV header."""
    first = line.split(maxsplit=1)[0]
    if by_alias(first) is not None:
        return True
    return default_kind is not None and _valid(default_kind, first) is not None


def _valid(kind: str, value: str) -> str | None:
    try:
        return KINDS[kind].validate(value)
    except ValueError:
        return None


def _entry(
    kind_name: str, value: str, note: str | None, where: str, problems: list[str]
) -> Entry | None:
    try:
        return kind_name, KINDS[kind_name].validate(value), note or None
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _parse_lines(
    lines: list[str], default_kind: str | None, source: str, problems: list[str]
) -> list[Entry]:
    entries: list[Entry] = []
    for number, line in enumerate(lines, 1):
        if not _is_content(line):
            continue
        where = f"{source}:{number}"
        first, *rest = line.split(maxsplit=1)
        kind_name = _kind_named(first)
        if kind_name is not None:
            if not rest:
                problems.append(f"{where}: `{first}` is not followed by a hash")
                continue
            value, *rest = rest[0].split(maxsplit=1)
        elif default_kind is not None:
            kind_name, value = default_kind, first
        elif _guess(first):
            problems.append(
                f"{where}: a bare hash needs its type: write `{_guess(first)} {first}`, "
                "or give the type of every line (--type)"
            )
            continue
        else:
            known = ", ".join(sorted(KINDS))
            problems.append(f"{where}: unknown hash type `{first}` (known: {known})")
            continue
        entry = _entry(kind_name, value, rest[0].strip() if rest else None, where, problems)
        if entry is not None:
            entries.append(entry)
    return entries


def _kind_named(name: str) -> str | None:
    """The registered name of the kind a list calls ``name`` (its types are ours,
    ThreatExchange's indicator types or python-threatexchange's signal types)."""
    found = by_alias(name)
    return found.name if found is not None else None


def _guess(value: str) -> str | None:
    """The kind a bare hash could be, for a helpful message; SHA-256 and PDQ look alike."""
    fits = [name for name in KINDS if _valid(name, value) is not None]
    fits.sort(key=lambda name: (not KINDS[name].exact, name))  # digests first
    return " or ".join(fits) if fits else None


def _parse_vpdq(lines: list[str], source: str, problems: list[str]) -> list[Entry]:
    """A video's frames as PDQ entries, noted with their frame number and time."""
    entries: list[Entry] = []
    for number, line in enumerate(lines, 1):
        if not _is_content(line):
            continue
        where = f"{source}:{number}"
        if not _VPDQ_LINE.fullmatch(line):
            problems.append(f"{where}: not a vPDQ line (frame_number,quality,pdq_hex,timestamp)")
            continue
        frame, quality, value, when = (cell.strip() for cell in line.split(","))
        try:
            seconds = float(when)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0) or int(quality) > 100:
            problems.append(f"{where}: quality must be 0-100 and the time seconds")
            continue
        if int(quality) < VPDQ_QUALITY:
            continue
        note = f"vpdq frame {int(frame)} at {seconds:.3f} s, quality {int(quality)}"
        entry = _entry("pdq", value, note, where, problems)
        if entry is not None:
            entries.append(entry)
    return entries


def _parse_csv(
    lines: list[str], first: int, default_kind: str | None, source: str, problems: list[str]
) -> list[Entry]:
    reader = csv.reader(lines[first:])
    header = [cell.strip().lower() for cell in next(reader)]
    header_where = f"{source}:{first + 1}"
    column = {name: index for index, name in reversed(list(enumerate(header)))}
    hash_col = next((column[n] for n in _CSV_HASH if n in column), None)
    type_col = next((column[n] for n in _CSV_TYPE if n in column), None)
    note_col = next((column[n] for n in _CSV_NOTE if n in column), None)
    extras = [(n, column[n]) for n in _CSV_EXTRA if n in column]
    if hash_col is None:
        problems.append(
            f"{header_where}: a CSV file needs a header naming its hash column "
            f"({', '.join(_CSV_HASH[:3])}); this one has: {', '.join(header)}"
        )
        return []
    if type_col is None and default_kind is None:
        problems.append(
            f"{header_where}: no type column ({', '.join(_CSV_TYPE[:3])}); "
            "add one, or give the type of every row (--type)"
        )
        return []
    needed = max(c for c in (hash_col, type_col, note_col) if c is not None) + 1
    entries: list[Entry] = []
    for row in reader:
        # line_num counts the lines read so far, header included: the row's last line.
        where = f"{source}:{first + reader.line_num}"
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if len(row) < needed:
            problems.append(f"{where}: expected {len(header)} columns, got {len(row)}")
            continue
        type_value = row[type_col].strip() if type_col is not None else ""
        if type_value:
            kind_name = _kind_named(type_value)
            if kind_name is None:
                known = ", ".join(sorted(KINDS))
                problems.append(f"{where}: unknown hash type `{type_value}` (known: {known})")
                continue
        elif default_kind is not None:
            kind_name = default_kind
        else:
            problems.append(f"{where}: the type column is empty")
            continue
        parts = [row[note_col].strip()] if note_col is not None else []
        parts += [f"{n}={row[c].strip()}" for n, c in extras if c < len(row) and row[c].strip()]
        entry = _entry(kind_name, row[hash_col], "; ".join(p for p in parts if p), where, problems)
        if entry is not None:
            entries.append(entry)
    return entries
