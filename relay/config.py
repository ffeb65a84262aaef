"""Sluice's configuration: one TOML file, checked against a declarative schema.

``SCHEMA`` lists every section and key with its type, default, check and a
line of documentation. ``load_config`` turns a file (or, given None, the
defaults alone) into frozen dataclasses; ``check_config`` lists every problem
with the file, line and dotted key an admin needs to fix it.

A new section is one dataclass and one ``Section`` entry; a table that may
repeat (``[[bank]]``) is a ``Section`` with ``array=True`` and becomes a tuple
of dataclasses. Keys without a default are required.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import ipaddress
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.effects import EFFECTS
from relay.errors import ConfigError, ConfigProblem
from relay.hosts import split_authority
from relay.policy import MATCH_KINDS

# The configuration's types, the schema's vocabulary (kinds, checks, key paths) that
# SCHEMA is written in and its sections may be extended with, and the entry points.
__all__ = [
    "ADMIN_TOKEN_ENV",
    "BOOLEAN",
    "DATABASE_URL_ENV",
    "DEFAULTS_SOURCE",
    "DEFAULT_INBOX_PATHS",
    "INTEGER",
    "NUMBER",
    "OPTIONAL_PATH",
    "PATH",
    "REQUIRED",
    "SCHEMA",
    "SIGNAL_MATCHES",
    "STRING",
    "STRINGS",
    "AdminConfig",
    "BankConfig",
    "Check",
    "Config",
    "DatabaseConfig",
    "DeliveryConfig",
    "EvidenceConfig",
    "Field",
    "Finish",
    "HoldConfig",
    "KeyPath",
    "Kind",
    "LogConfig",
    "MediaConfig",
    "NetworkConfig",
    "NotifyConfig",
    "OutboxConfig",
    "RuleConfig",
    "Section",
    "ServerConfig",
    "SignaturesConfig",
    "StorageConfig",
    "UpstreamConfig",
    "admin_listen",
    "array_of",
    "at_most",
    "bank_name",
    "check_config",
    "cidr",
    "config_warnings",
    "host_name",
    "http_url",
    "inbox_path",
    "listen_address",
    "load_config",
    "locate_keys",
    "main_check_config",
    "not_empty",
    "not_negative",
    "one_of",
    "optional_http_url",
    "parse",
    "positive",
    "postgresql_url",
    "startup_problems",
]

DATABASE_URL_ENV = "SLUICE_DATABASE_URL"
ADMIN_TOKEN_ENV = "SLUICE_ADMIN_TOKEN"
DEFAULTS_SOURCE = "<defaults>"

# A key's place in the document: table and key names, and indexes into arrays.
KeyPath = tuple[str | int, ...]


# --- the dataclasses ---------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    max_body_bytes: int
    inbox_paths: tuple[str, ...]
    hosts: tuple[str, ...]
    trusted_proxies: tuple[str, ...]

    @property
    def host(self) -> str:
        """The host part of ``listen``, without the brackets of an IPv6 address."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    timeout_seconds: float
    concurrency: int


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = field(repr=False)  # may hold a password
    pool_size: int
    keep_days: int


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path


@dataclass(frozen=True)
class NetworkConfig:
    allow: tuple[str, ...]
    allow_http: bool
    connect_timeout_seconds: float
    read_timeout_seconds: float
    max_redirects: int


@dataclass(frozen=True)
class SignaturesConfig:
    require: bool
    max_age_seconds: int
    clock_skew_seconds: int
    key_cache_seconds: int
    key_failure_cache_seconds: int
    key_refresh_interval_seconds: int
    key_fetch_timeout_seconds: float
    key_fetch_per_host: int
    key_fetch_per_client: int
    ld_max_bytes: int
    ld_max_nodes: int
    ld_budget_seconds: float
    ld_workers: int
    ld_max_waiting: int
    ld_per_host: int
    object_rate_per_minute: int
    object_rate_exempt: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryConfig:
    max_age_seconds: int
    backoff_initial_seconds: float
    backoff_max_seconds: float
    dedup_window_seconds: int
    lease_seconds: float


@dataclass(frozen=True)
class HoldConfig:
    max_seconds: float
    on_timeout: str
    on_error: str


@dataclass(frozen=True)
class MediaConfig:
    max_bytes: int
    max_pixels: int
    max_pixels_per_byte: int
    dense_above: int
    hash_workers: int
    hash_memory_bytes: int
    sender_pixels_per_minute: int
    max_refs: int
    max_dereferences: int
    max_dereference_depth: int
    dereference_seconds: float
    dereference_cache_seconds: int
    per_host_concurrency: int
    fetch_timeout_seconds: float
    cache_seconds: int


@dataclass(frozen=True)
class EvidenceConfig:
    key_file: Path | None


@dataclass(frozen=True)
class NotifyConfig:
    webhooks: tuple[str, ...]
    on: tuple[str, ...]
    timeout_seconds: float
    admin_url: str


@dataclass(frozen=True)
class OutboxConfig:
    max_attempts: int
    backoff_initial_seconds: float
    backoff_max_seconds: float


@dataclass(frozen=True)
class BankConfig:
    name: str
    category: str
    pdq_max_distance: int
    dihedral: bool


@dataclass(frozen=True)
class RuleConfig:
    match: str
    action: str
    effects: tuple[str, ...] = ()
    match_kind: str = "any"
    max_distance: int = -1
    min_signals: int = 1
    irreversible_on_perceptual: bool = False


@dataclass(frozen=True)
class AdminConfig:
    listen: str
    token_file: Path | None
    # From $SLUICE_ADMIN_TOKEN, else the contents of token_file; None: the
    # admin API refuses every request.
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LogConfig:
    level: str


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    upstream: UpstreamConfig
    database: DatabaseConfig
    storage: StorageConfig
    network: NetworkConfig
    signatures: SignaturesConfig
    delivery: DeliveryConfig
    hold: HoldConfig
    admin: AdminConfig
    log: LogConfig
    media: MediaConfig
    evidence: EvidenceConfig
    notify: NotifyConfig
    outbox: OutboxConfig
    bank: tuple[BankConfig, ...]
    rule: tuple[RuleConfig, ...]
    source: str  # the file read, or "<defaults>"


# --- the schema's vocabulary -------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What converting a value may depend on."""

    base: Path  # relative paths are relative to this directory
    environ: Mapping[str, str]


def _same(value: Any, ctx: _Context) -> Any:
    return value


@dataclass(frozen=True)
class Kind:
    """A TOML value type and how it becomes a Python value."""

    expected: str  # as in "expected an integer, got a string"
    accepts: Callable[[object], bool]
    convert: Callable[[Any, _Context], Any] = _same
    item: Kind | None = None  # arrays: the kind of each element


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_path(value: str, ctx: _Context) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else ctx.base / path).resolve()


def _to_optional_path(value: str, ctx: _Context) -> Path | None:
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
Finish = Callable[[dict[str, Any], _Context], list[tuple[str, str]]]


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


def bank_name(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        return "letters, digits, `_`, `.` and `-` only (rules refer to it by this name)"
    return None


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        message = f"must be one of {', '.join(choices)}; got `{value}`"
        close = difflib.get_close_matches(value.lower(), choices, n=1)
        return f"{message}; did you mean `{close[0]}`?" if close else message

    return check


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _split_listen(listen: str) -> tuple[str, int]:
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
        _split_listen(value)
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


# --- derived values ----------------------------------------------------------


def _backoff_order(values: dict[str, Any], ctx: _Context) -> list[tuple[str, str]]:
    if values["backoff_max_seconds"] < values["backoff_initial_seconds"]:
        initial = values["backoff_initial_seconds"]
        return [("backoff_max_seconds", f"must be at least backoff_initial_seconds ({initial})")]
    return []


def _admin_token(values: dict[str, Any], ctx: _Context) -> list[tuple[str, str]]:
    values["token"] = None
    token = ctx.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        values["token"] = token
        return []
    path: Path | None = values["token_file"]
    if path is None:
        return []
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return [("token_file", f"cannot read {path}: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return [("token_file", f"{path} is not UTF-8 text")]
    if not token:
        return [("token_file", f"{path} is empty")]
    values["token"] = token
    return []


# --- the schema --------------------------------------------------------------

DEFAULT_INBOX_PATHS = (
    "/inbox",
    "/users/*/inbox",  # Mastodon, Misskey, GoToSocial, Pleroma
    "/u/*/inbox",  # Lemmy users
    "/c/*/inbox",  # Lemmy communities
    "/m/*/inbox",  # Kbin / Mbin magazines
    "/site_inbox",  # Lemmy
    "/actor/inbox",  # Mastodon's instance actor
    "/ap/users/*/inbox",
    "/accounts/*/inbox",  # PeerTube
    "/video-channels/*/inbox",  # PeerTube
)

# fmt: off
SCHEMA: tuple[Section, ...] = (
    Section("server", ServerConfig, (
        Field("listen", STRING, "127.0.0.1:8080", "HOST:PORT Sluice listens on",
              check=listen_address),
        Field("max_body_bytes", INTEGER, 1_048_576, "larger inbox bodies get 413",
              check=positive),
        Field("inbox_paths", STRINGS, DEFAULT_INBOX_PATHS,
              "inbox path patterns (* is one segment); other requests are proxied unchanged",
              check=not_empty, each=inbox_path),
        Field("hosts", STRINGS, (),
              "Host values the instance answers to; a request signed for another gets 401",
              each=host_name),
        Field("trusted_proxies", STRINGS, ("127.0.0.0/8", "::1/128"),
              "proxies (CIDR) whose X-Real-IP / X-Forwarded-For name the sender", each=cidr),
    ), "Where Sluice listens and which requests are inbox deliveries."),
    Section("upstream", UpstreamConfig, (
        Field("url", STRING, "http://127.0.0.1:3000", "the instance behind Sluice",
              check=http_url),
        Field("timeout_seconds", NUMBER, 30.0, "how long one delivery may take", check=positive),
        Field("concurrency", INTEGER, 32, "simultaneous deliveries to the upstream",
              check=positive),
    ), "The instance Sluice protects."),
    Section("database", DatabaseConfig, (
        Field("url", STRING, "", "postgresql:// URL; empty: embedded PostgreSQL under data_dir",
              check=postgresql_url, env=DATABASE_URL_ENV),
        Field("pool_size", INTEGER, 10, "connections to the database", check=positive),
        Field("keep_days", INTEGER, 30,
              "days a finished activity's record and bytes are kept; 0: forever",
              check=not_negative),
    ), "Where activities are kept while held and delivered."),
    Section("storage", StorageConfig, (
        Field("data_dir", PATH, "./sluice-data",
              "Sluice's files; relative to the config file's directory", check=not_empty),
    ), "Files on disk."),
    Section("network", NetworkConfig, (
        Field("allow", STRINGS, (), "private networks (CIDR) contacted all the same", each=cidr),
        Field("allow_http", BOOLEAN, False, "fetch plain http:// URLs too"),
        Field("connect_timeout_seconds", NUMBER, 5.0, "connect timeout of fetches",
              check=positive),
        Field("read_timeout_seconds", NUMBER, 10.0, "read timeout of fetches", check=positive),
        Field("max_redirects", INTEGER, 5, "redirects followed per fetch", check=not_negative),
    ), "Fetches of keys, objects and media."),
    Section("signatures", SignaturesConfig, (
        Field("require", BOOLEAN, True,
              "false: accept unsigned or unverifiable activities, marked unverified"),
        Field("max_age_seconds", INTEGER, 43_200, "how old Date/created may be", check=positive),
        Field("clock_skew_seconds", INTEGER, 3_600, "how far ahead Date/created may be",
              check=not_negative),
        Field("key_cache_seconds", INTEGER, 3_600, "how long fetched keys are kept",
              check=not_negative),
        Field("key_failure_cache_seconds", INTEGER, 300,
              "how long a key that could not be fetched or confirmed stays refused",
              check=not_negative),
        Field("key_refresh_interval_seconds", INTEGER, 300,
              "least time between two forced refetches of one key after bad signatures",
              check=not_negative),
        Field("key_fetch_timeout_seconds", NUMBER, 5.0,
              "the longest fetching and confirming one key may take", check=positive),
        Field("key_fetch_per_host", INTEGER, 2, "key fetches from one host at a time",
              check=positive),
        Field("key_fetch_per_client", INTEGER, 8,
              "unknown keys one client address may wait for at once", check=positive),
        Field("ld_max_bytes", INTEGER, 65_536,
              "relayed objects with an RsaSignature2017 larger than this are refused",
              check=positive),
        Field("ld_max_nodes", INTEGER, 2_000,
              "the same, counted in JSON values", check=positive),
        Field("ld_budget_seconds", NUMBER, 2.0,
              "longest JSON-LD canonicalisation of one object; then refused", check=positive),
        Field("ld_workers", INTEGER, 1, "processes canonicalising JSON-LD (CPU cores at most)",
              check=positive),
        Field("ld_max_waiting", INTEGER, 16,
              "objects that may wait for a worker; more get 429", check=not_negative),
        Field("ld_per_host", INTEGER, 2,
              "objects from one signer's host waiting or checked at once; more get 429",
              check=positive),
        Field("object_rate_per_minute", INTEGER, 300,
              "object signatures checked per relaying signer and minute; more get 429",
              check=positive),
        Field("object_rate_exempt", STRINGS, (),
              "signers (actor ids) without that rate, e.g. relays you subscribe to"),
    ), "HTTP signatures of inbox deliveries."),
    Section("delivery", DeliveryConfig, (
        Field("max_age_seconds", INTEGER, 172_800,
              "retry failed deliveries until the activity is this old", check=positive),
        Field("backoff_initial_seconds", NUMBER, 1.0, "first retry delay", check=positive),
        Field("backoff_max_seconds", NUMBER, 600.0, "longest retry delay", check=positive),
        Field("dedup_window_seconds", INTEGER, 86_400,
              "a repeated activity id within this window is delivered once", check=positive),
        Field("lease_seconds", NUMBER, 30.0, "a worker's claim on an activity or an effect",
              check=positive),
    ), "Passing accepted activities to the upstream.", finish=_backoff_order),
    Section("hold", HoldConfig, (
        Field("max_seconds", NUMBER, 60.0, "the longest an activity waits for its checks",
              check=positive),
        Field("on_timeout", STRING, "review", "what happens when the checks take too long",
              check=one_of("deliver", "review", "reject")),
        Field("on_error", STRING, "review",
              "what happens when media cannot be fetched or decoded after retries",
              check=one_of("deliver", "review", "reject")),
    ), "Holding activities until their checks are done."),
    Section("admin", AdminConfig, (
        Field("listen", STRING, "127.0.0.1:9090",
              "HOST:PORT of the admin listener (/metrics, /readyz, the admin API); empty: none",
              check=admin_listen),
        Field("token_file", OPTIONAL_PATH, "",
              "file holding the admin API's bearer token; $SLUICE_ADMIN_TOKEN overrides"),
    ), "The admin API.", finish=_admin_token),
    Section("log", LogConfig, (
        Field("level", STRING, "info", "the least severe level logged",
              check=one_of("debug", "info", "warning", "error")),
    ), "Logging."),
    Section("media", MediaConfig, (
        Field("max_bytes", INTEGER, 33_554_432, "largest media file fetched (32 MiB)",
              check=positive),
        Field("max_pixels", INTEGER, 33_177_600,
              "larger images are decompression bombs (Mastodon's own limit)", check=positive),
        Field("max_pixels_per_byte", INTEGER, 256,
              "above dense_above pixels, more pixels per byte of file is a bomb",
              check=positive),
        Field("dense_above", INTEGER, 8_294_400,
              "images up to this many pixels are never refused for density",
              check=not_negative),
        Field("hash_workers", INTEGER, 0,
              "threads decoding and hashing images; 0: the CPUs, at most 4",
              check=not_negative),
        Field("hash_memory_bytes", INTEGER, 536_870_912,
              "estimated decoding memory in use at once; more images wait", check=positive),
        Field("sender_pixels_per_minute", INTEGER, 400_000_000,
              "decoded pixels per sender (actor) a minute; past it, review without decoding",
              check=positive),
        Field("max_refs", INTEGER, 32, "media URLs checked per activity; more: on_error",
              check=positive),
        Field("max_dereferences", INTEGER, 8,
              "objects named by id (boosted, quoted posts, authors) fetched per activity",
              check=not_negative),
        Field("max_dereference_depth", INTEGER, 3,
              "how many references deep (boost -> post -> quote -> author)",
              check=not_negative),
        Field("dereference_seconds", NUMBER, 20.0,
              "the longest fetching those objects may take per activity", check=positive),
        Field("dereference_cache_seconds", INTEGER, 300,
              "how long what a fetched object names is remembered", check=not_negative),
        Field("per_host_concurrency", INTEGER, 4, "simultaneous fetches from one host",
              check=positive),
        Field("fetch_timeout_seconds", NUMBER, 30.0, "the longest one media fetch may take",
              check=positive),
        Field("cache_seconds", INTEGER, 86_400,
              "how long a URL's or a file's result is reused without fetching again",
              check=not_negative),
    ), "Fetching and hashing the media of held activities."),
    Section("evidence", EvidenceConfig, (
        Field("key_file", OPTIONAL_PATH, "",
              "file with the 32-byte AES-GCM key that encrypts quarantined evidence"),
    ), "Evidence kept for quarantined activities."),
    Section("notify", NotifyConfig, (
        Field("webhooks", STRINGS, (), "URLs POSTed a JSON message about verdicts; []: none",
              each=http_url),
        Field("on", STRINGS, ("quarantine",), "dispositions that notify whatever the rule",
              each=one_of("deliver", "review", "reject", "quarantine")),
        Field("timeout_seconds", NUMBER, 10.0, "the longest one webhook POST may take",
              check=positive),
        Field("admin_url", STRING, "",
              "base URL of links in messages; empty: the admin listener's",
              check=optional_http_url),
    ), "Telling the admins about verdicts."),
    Section("outbox", OutboxConfig, (
        Field("max_attempts", INTEGER, 10, "tries of an effect before it is a dead letter",
              check=positive),
        Field("backoff_initial_seconds", NUMBER, 5.0, "first retry delay of an effect",
              check=positive),
        Field("backoff_max_seconds", NUMBER, 3600.0, "longest retry delay of an effect",
              check=positive),
    ), "Running the effects of verdicts (notify…).", finish=_backoff_order),
    Section("bank", BankConfig, (
        Field("name", STRING, REQUIRED, "the bank's name, as rules and `sluice bank` use it",
              check=bank_name),
        Field("category", STRING, REQUIRED, "what it lists: csam, ncii, terrorism, unwanted…",
              check=not_empty),
        Field("pdq_max_distance", INTEGER, 31, "PDQ matches within this Hamming distance",
              check=at_most(128)),
        Field("dihedral", BOOLEAN, False, "also match rotated and flipped copies"),
    ), "Hash lists to match media against.", array=True),
    Section("rule", RuleConfig, (
        Field("match", STRING, REQUIRED,
              "a bank name, category:NAME, or signal:unchecked (media that cannot be hashed)",
              check=not_empty),
        Field("action", STRING, REQUIRED, "where the activity goes when it fires",
              check=one_of("deliver", "review", "reject", "quarantine")),
        Field("effects", STRINGS, (), "what else happens when it fires (notify…)"),
        Field("match_kind", STRING, "any", "which matches count: exact, perceptual or any",
              check=one_of(*MATCH_KINDS)),
        Field("max_distance", INTEGER, -1,
              "matches farther than this do not count (-1: the bank's own threshold)"),
        Field("min_signals", INTEGER, 1,
              "independent signals needed (different matchers or hash kinds)",
              check=positive),
        Field("irreversible_on_perceptual", BOOLEAN, False,
              "let perceptual-only matches trigger irreversible effects"),
    ), "The policy: the strongest action among the rules that fire wins.", array=True),
)

#: Rule targets that are not banks: signals the media checks raise themselves.
SIGNAL_MATCHES = ("signal:unchecked",)
# fmt: on


# --- finding keys in the text ------------------------------------------------

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
    def __init__(self, schema: Sequence[Section], ctx: _Context) -> None:
        self.schema = schema
        self.ctx = ctx
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
        self.relations(built)
        return built

    def relations(self, built: dict[str, Any]) -> None:
        """Checks across tables: rules name configured banks; quarantine has its key."""
        banks = built.get("bank") or ()
        seen: set[str] = set()
        for index, bank in enumerate(banks):
            if bank.name in seen:
                self.problem(("bank", index, "name"), f"a bank named `{bank.name}` exists already")
            seen.add(bank.name)
        categories = {b.category for b in banks}
        targets = sorted(seen) + [f"category:{c}" for c in sorted(categories)]
        notify = built.get("notify")
        for index, rule in enumerate(built.get("rule") or ()):
            match = rule.match
            known = (
                match in seen
                or match in SIGNAL_MATCHES
                or (match.startswith("category:") and match[9:] in categories)
            )
            if not known:
                hint = difflib.get_close_matches(match, targets + list(SIGNAL_MATCHES), n=1)
                what = "category" if match.startswith("category:") else "bank"
                message = f"no [[bank]] {what} `{match}`"
                message += (
                    f"; did you mean `{hint[0]}`?"
                    if hint
                    else (f" (configured: {', '.join(targets) or 'none'})")
                )
                self.problem(("rule", index, "match"), message)
            for effect in rule.effects:
                if effect not in EFFECTS:
                    self.problem(
                        ("rule", index, "effects"),
                        f"no effect `{effect}` (known: {', '.join(EFFECTS)})",
                    )
                elif effect == "notify" and notify is not None and not notify.webhooks:
                    self.problem(
                        ("rule", index, "effects"),
                        "notify needs somewhere to send to: set [notify] webhooks",
                    )
            if rule.action == "quarantine":
                evidence = built.get("evidence")
                if evidence is not None and evidence.key_file is None:
                    self.problem(
                        ("rule", index, "action"),
                        "quarantine keeps encrypted evidence: set [evidence] key_file",
                    )

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


def _dotted(path: KeyPath) -> str:
    """``("bank", 0, "name")`` -> ``bank[0].name``; odd key names are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


def _line(found: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, else of its nearest enclosing table that is written down."""
    for end in range(len(path), 0, -1):
        line = found.get(path[:end])
        if line:
            return line
    return None


_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def parse(
    text: str,
    file: str,
    *,
    base: Path,
    environ: Mapping[str, str],
    schema: Sequence[Section] = SCHEMA,
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
    checker = _Checker(schema, _Context(base, environ))
    built = checker.document(data)
    found = locate_keys(text)
    problems = [
        ConfigProblem(issue.source, None, _dotted(issue.path), issue.message)
        if issue.source
        else ConfigProblem(file, _line(found, issue.path), _dotted(issue.path), issue.message)
        for issue in checker.issues
    ]
    problems.sort(key=lambda p: (p.file != file, p.line is None, p.line or 0))
    return built, problems


# --- the entry points --------------------------------------------------------


def _read(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None
) -> tuple[Config | None, list[ConfigProblem]]:
    environ = os.environ if environ is None else environ
    if path is None:
        text, source, base = "", DEFAULTS_SOURCE, Path.cwd()
    else:
        source = os.fspath(path)
        base = Path(source).absolute().parent
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            return None, [ConfigProblem(source, None, "(file)", f"cannot read: {exc.strerror}")]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            return None, [ConfigProblem(source, line, "(file)", "is not UTF-8 text")]
    built, problems = parse(text, source, base=base, environ=environ)
    if problems:
        return None, problems
    return Config(**built, source=source), []


def check_config(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None
) -> list[ConfigProblem]:
    """Every problem of the file at ``path`` (None: the defaults) and the environment."""
    return _read(path, environ)[1]


def load_config(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """The configuration in ``path``, or the embedded defaults when ``path`` is None.

    ``environ`` (default ``os.environ``) supplies SLUICE_DATABASE_URL and
    SLUICE_ADMIN_TOKEN; an empty variable counts as unset. Raises ConfigError
    with every problem found.
    """
    config, problems = _read(path, environ)
    if config is None:
        raise ConfigError(problems)
    return config


def config_warnings(config: Config) -> list[ConfigProblem]:
    """What is valid but unsafe: Sluice runs with it, the admin should still hear of it."""
    locate = _locator(config)

    def warn(path: KeyPath, message: str) -> ConfigProblem:
        return locate(path, f"warning: {message}")

    warnings = []
    if not config.server.hosts:
        warnings.append(
            warn(
                ("server", "hosts"),
                "empty: activities signed for any host are accepted (replays from other "
                'servers too); list the names your instance answers to, like ["social.example"]',
            )
        )
    secrets = (
        ("evidence", "key_file", config.evidence.key_file),
        ("admin", "token_file", config.admin.token_file),
    )
    for section, key, file in secrets:
        with contextlib.suppress(OSError):
            if file is not None and file.stat().st_mode & 0o007:
                mode = oct(file.stat().st_mode & 0o777)
                warnings.append(
                    warn(
                        (section, key),
                        f"{file} is readable or writable by every user (mode {mode}); "
                        f"chmod o-rwx {file}",
                    )
                )
    return warnings


def _locator(config: Config) -> Callable[[KeyPath, str], ConfigProblem]:
    """A problem at ``path`` of the file ``config`` came from, with its line when written."""
    found: dict[KeyPath, int] = {}
    if config.source != DEFAULTS_SOURCE:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            found = locate_keys(Path(config.source).read_text(encoding="utf-8"))

    def locate(path: KeyPath, message: str) -> ConfigProblem:
        return ConfigProblem(config.source, _line(found, path), _dotted(path), message)

    return locate


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def startup_problems(config: Config, *, evidence_key: bool = True) -> list[ConfigProblem]:
    """What ``serve`` would refuse at start although the file itself is valid.

    The file alone cannot show these (they depend on other files and on the machine),
    so ``check-config`` and every command's start-up ask here, before anything opens.
    ``evidence_key=False`` skips reading the evidence key, for commands that never use it.
    """
    locate = _locator(config)
    problems = []
    data_dir = config.storage.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        problems.append(locate(("storage", "data_dir"), f"{data_dir} is not a directory"))
    elif not config.database.url:
        from relay.store.db import embedded_socket_problem  # connect() refuses it

        socket = embedded_socket_problem(data_dir)
        if socket is not None:
            problems.append(ConfigProblem(config.source, None, "storage.data_dir", socket))
    if evidence_key and config.evidence.key_file is not None:
        from relay.evidence import EvidenceError, EvidenceKey  # loaded as serve loads it

        try:
            EvidenceKey.load(config.evidence.key_file)
        except EvidenceError as exc:
            problems.append(locate(("evidence", "key_file"), str(exc)))
    admin = config.admin.listen
    if admin and not admin.endswith(":0"):
        host, port = _split_listen(admin)
        if port == config.server.port and (
            host == config.server.host or _wildcard(host) or _wildcard(config.server.host)
        ):
            problems.append(
                locate(
                    ("admin", "listen"),
                    f"`{admin}` takes the port of [server] listen (`{config.server.listen}`): "
                    "give the admin listener a port of its own",
                )
            )
    return problems


def main_check_config(path: str) -> int:
    """``sluice check-config FILE``: OK on stdout and 0, or the problems on stderr and 1.

    It checks what ``serve`` checks before it starts (``startup_problems``). Warnings go
    to stderr too, but leave the answer OK.
    """
    config, problems = _read(path, None)
    if config is not None:
        problems = startup_problems(config)
        if problems:
            config = None
    if config is not None:
        for warning in config_warnings(config):
            print(warning, file=sys.stderr)
        print(f"OK: {path}")
        return 0
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1
