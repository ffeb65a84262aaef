"""The schema engine: a configuration described as sections of typed, checked keys.

A ``Section`` is one TOML table (``[[name]]`` when it may repeat) and the dataclass
it becomes; each ``Field`` has a ``Kind`` (``STRING``, ``INTEGER``…), a default
(``REQUIRED`` when none), an optional ``Check`` such as ``positive`` or ``one_of``, and a
line of documentation. ``build_sections`` checks a document against a schema and
returns the built sections with every problem, each with its file, line and dotted key.
Sluice's own schema is ``relay.config.sluice``.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.config.locate import KeyPath, dotted, line_of, locate_keys
from relay.errors import ConfigProblem
from relay.hosts import split_authority

__all__ = [
    "BOOLEAN",
    "INTEGER",
    "NUMBER",
    "OPTIONAL_PATH",
    "PATH",
    "REQUIRED",
    "STRING",
    "STRINGS",
    "Check",
    "Context",
    "Field",
    "Finish",
    "Kind",
    "Relations",
    "Section",
    "admin_listen",
    "array_of",
    "at_most",
    "build_sections",
    "cidr",
    "host_name",
    "http_url",
    "inbox_path",
    "listen_address",
    "not_empty",
    "not_negative",
    "one_of",
    "optional_http_url",
    "positive",
    "postgresql_url",
    "split_listen",
]


# --- the schema's vocabulary -------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What converting a value may depend on."""

    base: Path  # relative paths are relative to this directory
    environ: Mapping[str, str]


def _same(value: Any, ctx: Context) -> Any:
    return value


@dataclass(frozen=True)
class Kind:
    """A TOML value type and how it becomes a Python value."""

    expected: str  # as in "expected an integer, got a string"
    accepts: Callable[[object], bool]
    convert: Callable[[Any, Context], Any] = _same
    item: Kind | None = None  # arrays: the kind of each element


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_path(value: str, ctx: Context) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else ctx.base / path).resolve()


def _to_optional_path(value: str, ctx: Context) -> Path | None:
    return _to_path(value, ctx) if value else None


STRING = Kind("a string", lambda v: isinstance(v, str))
INTEGER = Kind("an integer", _is_int)
NUMBER = Kind("a number", _is_number, lambda v, ctx: float(v))  # integers welcome
BOOLEAN = Kind("a boolean", lambda v: isinstance(v, bool))
PATH = Kind("a string", lambda v: isinstance(v, str), _to_path)
OPTIONAL_PATH = Kind("a string", lambda v: isinstance(v, str), _to_optional_path)  # "": None


def array_of(item: Kind, plural: str) -> Kind:
    """An array whose elements are ``item``; it becomes a tuple."""
    return Kind(
        f"an array of {plural}",
        lambda v: isinstance(v, list | tuple),
        lambda v, ctx: tuple(item.convert(x, ctx) for x in v),
        item,
    )


STRINGS = array_of(STRING, "strings")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

# A check looks at a value of the right type, as written in the TOML, and
# returns what is wrong with it, or None.
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    """One key of a section."""

    name: str
    kind: Kind
    default: Any = REQUIRED  # in TOML form; REQUIRED: the key must be given
    doc: str = ""
    check: Check | None = None  # on the whole value
    each: Check | None = None  # arrays: on each element
    env: str | None = None  # an environment variable that, when set, overrides the key


# A hook run once a table's keys are all valid: it may derive further fields
# into ``values`` and returns problems as (key, message).
Finish = Callable[[dict[str, Any], Context], list[tuple[str, str]]]


@dataclass(frozen=True)
class Section:
    """One table of the file: ``[name]``, or ``[[name]]`` when ``array``."""

    name: str
    type: type
    fields: tuple[Field, ...]
    doc: str = ""
    array: bool = False
    finish: Finish | None = None

    @property
    def header(self) -> str:
        return f"[[{self.name}]]" if self.array else f"[{self.name}]"


# A hook run once every table is checked, for what spans tables: it reads the
# sections built so far and returns problems as (key path, message).
Relations = Callable[[Mapping[str, Any]], list[tuple[KeyPath, str]]]


# --- checks ------------------------------------------------------------------


def positive(value: float) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value > 0 else f"must be greater than 0, got {value}"


def not_negative(value: float) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value >= 0 else f"must be 0 or more, got {value}"


def not_empty(value: str | list[Any]) -> str | None:
    return None if value else "must not be empty"


def at_most(limit: int) -> Check:
    def check(value: int) -> str | None:
        if not 0 <= value <= limit:
            return f"must be between 0 and {limit}"
        return None

    return check


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        message = f"must be one of {', '.join(choices)}; got `{value}`"
        close = difflib.get_close_matches(value.lower(), choices, n=1)
        return f"{message}; did you mean `{close[0]}`?" if close else message

    return check


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def split_listen(listen: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:8080); ValueError says what is wrong."""
    host, colon, port = listen.rpartition(":")
    if not colon:
        raise ValueError(f"must be HOST:PORT, like 127.0.0.1:8080; got `{listen}`")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"missing `]` after the IPv6 address in `{listen}`")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"`{host}` is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, like [::1]:8080; got `{listen}`")
    elif not host:
        raise ValueError(f"missing host (0.0.0.0 listens on every IPv4 address); got `{listen}`")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"`{host}` is not a host name or IP address")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535; got `{port}`")
    return host, int(port)


def listen_address(value: str) -> str | None:
    try:
        split_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def admin_listen(value: str) -> str | None:
    """Like ``listen``, but empty turns the listener off and port 0 takes a free port."""
    if not value:
        return None
    host, colon, port = value.rpartition(":")
    return listen_address(f"{host}:1" if colon and port == "0" else value)


def host_name(value: str) -> str | None:
    """A host the instance answers to, as senders write it in Host: a name, an optional port."""
    if "/" in value or any(c.isspace() for c in value):
        return f"`{value}` is not a host name like social.example (no scheme, no path)"
    if value.count(":") > 1 and not value.startswith("["):
        return f"write an IPv6 address in brackets, like [2001:db8::1]; got `{value}`"
    host, port = split_authority(value)
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port must be a number from 1 to 65535; got `{port}`"
    if not (_HOSTNAME.fullmatch(host) or _is_ip(host)):
        return f"`{value}` is not a host name like social.example (no scheme, no path)"
    return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def http_url(value: str) -> str | None:
    # The value is not echoed: a URL may carry a password.
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        got = f"`{parts.scheme}:`" if parts.scheme else "none"
        return f"must be an http:// or https:// URL; scheme is {got}"
    if not parts.hostname:
        return "must name a host, like http://127.0.0.1:3000"
    if any(c.isspace() for c in value):
        return "must not contain spaces"
    return None


def optional_http_url(value: str) -> str | None:
    """An http(s) URL, or empty for none."""
    return http_url(value) if value else None


def postgresql_url(value: str) -> str | None:
    # Empty means the embedded PostgreSQL. Host may sit in the query string
    # (?host=/run/postgresql), so only the scheme is checked.
    if not value or urlsplit(value).scheme in ("postgresql", "postgres"):
        return None
    return "must be a postgresql:// URL, or empty for the embedded database"


def cidr(value: str) -> str | None:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"`{value}` is not a network like 10.0.0.0/8 or fd00::/8"
        return f"`{value}` has host bits set; did you mean `{network}`?"
    return None


def inbox_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"must start with `/`; got `{value}`"
    if any(c.isspace() or c in "?#" for c in value):
        return f"must be a plain path, without spaces, `?` or `#`; got `{value}`"
    if any("*" in segment and segment != "*" for segment in value.split("/")):
        return f"`*` must stand for a whole path segment, as in /users/*/inbox; got `{value}`"
    return None


# --- checking a document -----------------------------------------------------


@dataclass(frozen=True)
class _Issue:
    path: KeyPath
    message: str
    source: str | None = None  # where the value came from when not the file


def _describe(value: object) -> str:
    """A TOML value's type, as an admin reads it: "a string", "an array"."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return type(value).__name__


def _is_table_like(value: object) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(item, dict) for item in value)
    return isinstance(value, dict)


def _unknown(name: str, value: object, known: Sequence[str], others: Sequence[Section]) -> str:
    """Say that ``name`` is unknown, and what the admin may have meant.

    ``known`` are the names allowed where ``name`` stands; ``others`` are the
    sections that ``name`` may have strayed from.
    """
    message = f"unknown {'table' if _is_table_like(value) else 'key'} `{name}`"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{message}; did you mean `{close[0]}`?"
    homes = [s.header for s in others if any(f.name == name for f in s.fields)]
    if homes:
        return f"{message}; it belongs in {' or '.join(homes)}"
    keys = [(s.name, f.name) for s in others for f in s.fields]
    close = difflib.get_close_matches(name, [key for _, key in keys], n=1)
    if close:
        options = " or ".join(f"`{table}.{key}`" for table, key in keys if key == close[0])
        return f"{message}; did you mean {options}?"
    return message


class _Checker:
    def __init__(
        self, schema: Sequence[Section], ctx: Context, relations: Relations | None
    ) -> None:
        self.schema = schema
        self.ctx = ctx
        self.relations = relations
        self.issues: list[_Issue] = []

    def problem(self, path: KeyPath, message: str, source: str | None = None) -> None:
        self.issues.append(_Issue(path, message, source))

    def document(self, data: dict[str, Any]) -> dict[str, Any]:
        """Check every section; return the built ones (all of them when no issues)."""
        names = [s.name for s in self.schema]
        for name, value in data.items():
            if name not in names:
                self.problem((name,), _unknown(name, value, names, self.schema))
        built: dict[str, Any] = {}
        for section in self.schema:
            path: KeyPath = (section.name,)
            raw = data.get(section.name)
            if section.array:
                if raw is None:
                    raw = []
                if isinstance(raw, dict):
                    message = (
                        f"write [[{section.name}]], not [{section.name}]: there may be several"
                    )
                    self.problem(path, message)
                elif not isinstance(raw, list):
                    self.problem(path, f"expected an array of tables, got {_describe(raw)}")
                else:
                    items = []
                    for index, item in enumerate(raw):
                        if isinstance(item, dict):
                            items.append(self.table(section, item, (*path, index)))
                        else:
                            self.problem((*path, index), f"expected a table, got {_describe(item)}")
                            items.append(None)
                    if None not in items:
                        built[section.name] = tuple(items)
            else:
                if raw is None:
                    raw = {}
                if isinstance(raw, list) and _is_table_like(raw):
                    message = f"write [{section.name}], not [[{section.name}]]: there is only one"
                    self.problem(path, message)
                elif not isinstance(raw, dict):
                    self.problem(path, f"expected a table, got {_describe(raw)}")
                else:
                    table = self.table(section, raw, path)
                    if table is not None:
                        built[section.name] = table
        if self.relations is not None:
            for path, message in self.relations(built):
                self.problem(path, message)
        return built

    def table(self, section: Section, raw: dict[str, Any], path: KeyPath) -> Any:
        names = [f.name for f in section.fields]
        for key, value in raw.items():
            if key not in names:
                others = [s for s in self.schema if s is not section]
                self.problem((*path, key), _unknown(key, value, names, others))
        values: dict[str, Any] = {}
        ok = True
        for spec in section.fields:
            key_path = (*path, spec.name)
            if spec.name in raw:
                value = raw[spec.name]
            elif spec.default is REQUIRED:
                self.problem(key_path, f"missing required key `{spec.name}`")
                ok = False
                continue
            else:
                value = spec.default
            ok &= self.value(spec, value, key_path, values)
            env_value = self.ctx.environ.get(spec.env, "") if spec.env else ""
            if env_value:
                ok &= self.value(spec, env_value, key_path, values, source=f"${spec.env}")
        if not ok:
            return None
        if section.finish is not None:
            problems = section.finish(values, self.ctx)
            for key, message in problems:
                self.problem((*path, key), message)
            if problems:
                return None
        return section.type(**values)

    def value(
        self,
        spec: Field,
        value: Any,
        path: KeyPath,
        into: dict[str, Any],
        source: str | None = None,
    ) -> bool:
        """Check one value; on success store it, converted, under ``into[spec.name]``."""
        kind = spec.kind
        if not kind.accepts(value):
            self.problem(path, f"expected {kind.expected}, got {_describe(value)}", source)
            return False
        ok = True
        message: str | None
        if kind.item is not None:
            for index, item in enumerate(value):
                if not kind.item.accepts(item):
                    message = f"expected {kind.item.expected}, got {_describe(item)}"
                elif spec.each is not None:
                    message = spec.each(item)
                else:
                    message = None
                if message:
                    self.problem((*path, index), message, source)
                    ok = False
        if ok and spec.check is not None:
            message = spec.check(value)
            if message:
                self.problem(path, message, source)
                ok = False
        if ok:
            into[spec.name] = kind.convert(value, self.ctx)
        return ok


_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def build_sections(
    text: str,
    file: str,
    *,
    base: Path,
    environ: Mapping[str, str],
    schema: Sequence[Section],
    relations: Relations | None = None,
) -> tuple[dict[str, Any], list[ConfigProblem]]:
    """Check TOML text against ``schema``: the built sections, and every problem.

    The sections are complete only when there are no problems.
    """
    text = text.removeprefix("\ufeff")  # a byte order mark, as Windows editors write
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POSITION.search(str(exc))
        line = int(match.group(1)) if match else text.count("\n") + 1
        return {}, [ConfigProblem(file, line, "(syntax)", str(exc))]
    checker = _Checker(schema, Context(base, environ), relations)
    built = checker.document(data)
    found = locate_keys(text)
    problems = [
        ConfigProblem(issue.source, None, dotted(issue.path), issue.message)
        if issue.source
        else ConfigProblem(file, line_of(found, issue.path), dotted(issue.path), issue.message)
        for issue in checker.issues
    ]
    problems.sort(key=lambda p: (p.file != file, p.line is None, p.line or 0))
    return built, problems
