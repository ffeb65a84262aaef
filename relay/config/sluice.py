"""Sluice's configuration: one TOML file, checked against a declarative schema.

``SCHEMA`` lists every section and key with its type, default, check and a
line of documentation. ``load_config`` turns a file (or, given None, the
defaults alone) into frozen dataclasses; ``check_config`` lists every problem
with the file, line and dotted key an admin needs to fix it.

A new section is one dataclass and one ``Section`` entry; a table that may
repeat (``[[bank]]``) is a ``Section`` with ``array=True`` and becomes a tuple
of dataclasses. Keys without a default are required. What spans tables (rules
name configured banks, quarantine needs the evidence key) is ``_relations``.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.config.locate import KeyPath, dotted, line_of, locate_keys
from relay.config.schema import (
    BOOLEAN,
    INTEGER,
    NUMBER,
    OPTIONAL_PATH,
    PATH,
    REQUIRED,
    STRING,
    STRINGS,
    Context,
    Field,
    Finish,
    Section,
    admin_listen,
    at_most,
    build_sections,
    cidr,
    host_name,
    http_url,
    inbox_path,
    listen_address,
    not_empty,
    not_negative,
    one_of,
    optional_http_url,
    positive,
    postgresql_url,
    split_listen,
)
from relay.effects import EFFECTS, INSTANCE_EFFECTS
from relay.errors import ConfigError, ConfigProblem
from relay.instance import SOFTWARE
from relay.instance_actions import SUPPORTED as ACTS_ON
from relay.policy import MATCH_KINDS
from relay.receipt import RECEIPT_CATEGORIES

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ARACHNID_CREDENTIALS_ENV",
    "BANKS_MATCHER",
    "CLASSIFIER_TOKEN_ENV",
    "DATABASE_URL_ENV",
    "DEFAULTS_SOURCE",
    "DEFAULT_INBOX_PATHS",
    "DSA_TOKEN_ENV",
    "MATCHERS",
    "NCMEC_CREDENTIALS_ENV",
    "PHOTODNA_KEY_ENV",
    "SCHEMA",
    "SIGNAL_MATCHES",
    "UPSTREAM_TOKEN_ENV",
    "ActorConfig",
    "AdminConfig",
    "ArachnidConfig",
    "BankConfig",
    "ClassifierConfig",
    "Config",
    "DatabaseConfig",
    "DeliveryConfig",
    "EvidenceConfig",
    "HoldConfig",
    "LogConfig",
    "MediaConfig",
    "NetworkConfig",
    "NotifyConfig",
    "OutboundConfig",
    "OutboxConfig",
    "PhotoDnaConfig",
    "ReceiptsConfig",
    "ReportsConfig",
    "ReviewConfig",
    "RuleConfig",
    "ServerConfig",
    "SignaturesConfig",
    "StorageConfig",
    "TrustConfig",
    "UploadConfig",
    "UpstreamConfig",
    "actor_name",
    "bank_name",
    "check_config",
    "config_warnings",
    "jurisdiction",
    "load_config",
    "main_check_config",
    "on_failure",
    "parse",
    "startup_problems",
    "trust_peer",
    "tunnel_host",
]

DATABASE_URL_ENV = "SLUICE_DATABASE_URL"
ADMIN_TOKEN_ENV = "SLUICE_ADMIN_TOKEN"
UPSTREAM_TOKEN_ENV = "SLUICE_UPSTREAM_TOKEN"
NCMEC_CREDENTIALS_ENV = "SLUICE_NCMEC_CREDENTIALS"
PHOTODNA_KEY_ENV = "SLUICE_PHOTODNA_KEY"
ARACHNID_CREDENTIALS_ENV = "SLUICE_ARACHNID_CREDENTIALS"
CLASSIFIER_TOKEN_ENV = "SLUICE_CLASSIFIER_TOKEN"
DSA_TOKEN_ENV = "SLUICE_DSA_TOKEN"
DEFAULTS_SOURCE = "<defaults>"


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
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    timeout_seconds: float
    concurrency: int
    software: str = ""
    token_file: Path | None = None
    ban_removes_data: bool = False
    lemmy_api: str = "v3"
    # From $SLUICE_UPSTREAM_TOKEN, else the contents of token_file; None: no API calls.
    token: str | None = field(default=None, repr=False)


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
    fresh_signature_seconds: float = 3000.0
    accepted_signature_seconds: float = 3900.0


@dataclass(frozen=True)
class HoldConfig:
    max_seconds: float
    on_timeout: str
    on_error: str
    lazy: bool = False


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
    video_max_seconds: float = 3600.0
    video_time_budget_seconds: float = 120.0


@dataclass(frozen=True)
class EvidenceConfig:
    key_file: Path | None
    store: str = "local"
    keep_days: int = 365
    purge_every_seconds: float = 3600.0


@dataclass(frozen=True)
class NotifyConfig:
    webhooks: tuple[str, ...]
    on: tuple[str, ...]
    timeout_seconds: float
    admin_url: str
    key_file: Path | None = None
    # The contents of key_file: each message's HMAC-SHA256 key; None: unsigned.
    key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class OutboxConfig:
    max_attempts: int
    backoff_initial_seconds: float
    backoff_max_seconds: float


@dataclass(frozen=True)
class UploadConfig:
    on_error: str
    max_bytes: int
    timeout_seconds: float
    concurrency: int = 4
    lazy: bool = False


@dataclass(frozen=True)
class OutboundConfig:
    listen: str
    tunnel: tuple[str, ...]
    trust_file: Path | None
    read_timeout_seconds: float
    max_connections: int
    delivery_max_age_seconds: float = 3600.0
    media_on_error: str = "refuse"
    media_timeout_seconds: float = 20.0
    media_concurrency: int = 4


@dataclass(frozen=True)
class ActorConfig:
    base_url: str
    name: str
    key_dir: Path | None


@dataclass(frozen=True)
class ReceiptsConfig:
    flag: bool
    flag_skip_categories: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    legal_ground: str
    appeal: str
    accept_follows: str
    follow_domains: tuple[str, ...]
    follow: tuple[str, ...]


@dataclass(frozen=True)
class TrustConfig:
    peer: str
    categories: tuple[str, ...]
    jurisdictions: tuple[str, ...]
    automated: bool
    hashes: bool


@dataclass(frozen=True)
class BankConfig:
    name: str
    category: str
    pdq_max_distance: int
    dihedral: bool
    source: str = ""  # "": filled by hand (sluice bank import); else synced from it
    source_url: str = ""
    source_credentials_file: Path | None = None
    source_environment: str = ""
    source_privacy_group: str = ""
    sync_every_seconds: float = 3600.0


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
    session_hours: float = 12.0
    secure_cookies: bool = True
    min_password_length: int = 12
    logins_per_name_per_minute: int = 5
    logins_per_address_per_minute: int = 20
    # From $SLUICE_ADMIN_TOKEN, else the contents of token_file; None: the
    # admin API refuses every request.
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ReviewConfig:
    """The review UI's instance defaults; each moderator may change the first four."""

    blur: int = 12
    greyscale: bool = True
    autoplay: bool = False
    muted: bool = True
    reveal_seconds: int = 60
    exposure_minutes_per_day: int = 300
    reveals_per_day: int = 100
    break_every_minutes: int = 60
    support: tuple[str, ...] = ()
    page_size: int = 50
    report_categories: tuple[str, ...] = ("csam",)


@dataclass(frozen=True)
class PhotoDnaConfig:
    enabled: bool = False
    endpoint: str = "https://api.microsoftmoderator.com/photodna/v1.0/Match"
    key_file: Path | None = None
    category: str = "csam"
    small: str = "upscale"
    enhance: bool = False
    rate_per_second: float = 5.0
    timeout_seconds: float = 10.0
    max_answer_bytes: int = 65_536
    cache_seconds: int = 86_400
    cache_entries: int = 100_000
    # From $SLUICE_PHOTODNA_KEY, else the contents of key_file.
    key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ArachnidConfig:
    enabled: bool = False
    endpoint: str = "https://shield.projectarachnid.com/"
    credentials_file: Path | None = None
    send: str = "bytes"
    rate_per_second: float = 5.0
    timeout_seconds: float = 10.0
    max_answer_bytes: int = 262_144
    cache_seconds: int = 86_400
    cache_entries: int = 100_000
    # From $SLUICE_ARACHNID_CREDENTIALS ("USERNAME:PASSWORD"), else the file's text.
    credentials: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ClassifierConfig:
    endpoint: str = ""  # empty: no classifier
    token_file: Path | None = None
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    score_key: str = "score"
    match_at: float = 0.9
    review_at: float = -1.0  # negative: no suspect signals
    category: str = "csam"
    kinds: tuple[str, ...] = ("image",)
    rate_per_second: float = 10.0
    timeout_seconds: float = 10.0
    max_answer_bytes: int = 65_536
    cache_seconds: int = 86_400
    cache_entries: int = 100_000
    # From $SLUICE_CLASSIFIER_TOKEN, else the file's text; None: no token header.
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ReportsConfig:
    """Who reports (the drafts' contact), and where an admin may submit a draft."""

    contact_name: str = ""
    contact_email: str = ""
    contact_phone: str = ""
    instance_name: str = ""
    instance_url: str = ""
    ncmec_url: str = "https://exttest.cybertip.org/ispws"
    ncmec_credentials_file: Path | None = None
    dsa_url: str = "https://transparency.dsa.ec.europa.eu"
    dsa_token_file: Path | None = None
    # From $SLUICE_NCMEC_CREDENTIALS ("USERNAME:PASSWORD"), else the file's text.
    ncmec_credentials: str | None = field(default=None, repr=False)
    # From $SLUICE_DSA_TOKEN, else the file's text.
    dsa_token: str | None = field(default=None, repr=False)

    @property
    def reporter(self) -> dict[str, str]:
        """The drafts' ``reporter`` (relay.review.drafts): the fields that are set."""
        fields = {
            "name": self.contact_name,
            "email": self.contact_email,
            "phone": self.contact_phone,
            "instance_name": self.instance_name,
            "instance_url": self.instance_url,
        }
        return {k: v for k, v in fields.items() if v}


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
    review: ReviewConfig
    reports: ReportsConfig
    photodna: PhotoDnaConfig
    arachnid: ArachnidConfig
    classifier: ClassifierConfig
    log: LogConfig
    media: MediaConfig
    evidence: EvidenceConfig
    notify: NotifyConfig
    outbox: OutboxConfig
    upload: UploadConfig
    outbound: OutboundConfig
    actor: ActorConfig
    receipts: ReceiptsConfig
    bank: tuple[BankConfig, ...]
    rule: tuple[RuleConfig, ...]
    trust: tuple[TrustConfig, ...]
    source: str  # the file read, or "<defaults>"


def tunnel_host(value: str) -> str | None:
    """A host passed through the outbound door untouched: a name, or ``*.name`` for below it."""
    bare = value[2:] if value.startswith("*.") else value
    if ":" in bare or host_name(bare) is not None:
        return f"`{value}` is not a host name like lemmy.example or *.lemmy.example (no port)"
    return None


_JURISDICTION = re.compile(r"[A-Z]{2}")
_ACTOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def jurisdiction(value: str) -> str | None:
    """An ISO 3166-1 alpha-2 code (upper case) or EU, as the DSA's database writes them."""
    if _JURISDICTION.fullmatch(value):
        return None
    return f'must be a two-letter country code like "DE", or "EU"; got `{value}`'


def actor_name(value: str) -> str | None:
    if _ACTOR_NAME.fullmatch(value):
        return None
    return f"must be letters, digits, _ . or - (a WebFinger user part); got `{value}`"


def trust_peer(value: str) -> str | None:
    return None if value == "*" else host_name(value)


def bank_name(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        return "letters, digits, `_`, `.` and `-` only (rules refer to it by this name)"
    return None


# --- derived values ----------------------------------------------------------


def _backoff_order(values: dict[str, Any], ctx: Context) -> list[tuple[str, str]]:
    if values["backoff_max_seconds"] < values["backoff_initial_seconds"]:
        initial = values["backoff_initial_seconds"]
        return [("backoff_max_seconds", f"must be at least backoff_initial_seconds ({initial})")]
    return []


def _admin_token(values: dict[str, Any], ctx: Context) -> list[tuple[str, str]]:
    values["token"] = None
    token = ctx.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        values["token"] = token
        return []
    return _secret(values, "token_file", "token")


def _upstream_token(values: dict[str, Any], ctx: Context) -> list[tuple[str, str]]:
    values["token"] = None
    token = ctx.environ.get(UPSTREAM_TOKEN_ENV, "").strip()
    if token:
        values["token"] = token
        return []
    return _secret(values, "token_file", "token")


def _reports_secrets(values: dict[str, Any], ctx: Context) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for env, key, into in (
        (NCMEC_CREDENTIALS_ENV, "ncmec_credentials_file", "ncmec_credentials"),
        (DSA_TOKEN_ENV, "dsa_token_file", "dsa_token"),
    ):
        values[into] = None
        given = ctx.environ.get(env, "").strip()
        if given:
            values[into] = given
        else:
            problems += _secret(values, key, into)
    credentials = values["ncmec_credentials"]
    if credentials is not None and ":" not in credentials:
        problems.append(("ncmec_credentials_file", "must hold USERNAME:PASSWORD on one line"))
    return problems


def _checker_secret(env: str, key: str, into: str, needed: str | None) -> Finish:
    """A checker's credential: ``$env``, else the file at ``key``; needed when the
    field ``needed`` (its switch) is on."""

    def finish(values: dict[str, Any], ctx: Context) -> list[tuple[str, str]]:
        values[into] = None
        given = ctx.environ.get(env, "").strip()
        problems: list[tuple[str, str]] = []
        if given:
            values[into] = given
        else:
            problems = _secret(values, key, into)
        if needed and values[needed] and values[into] is None and not problems:
            problems.append((key, f"needed when {needed} is on: a file, or ${env}"))
        if into == "credentials" and values[into] and ":" not in values[into]:
            problems.append((key, "must hold USERNAME:PASSWORD on one line"))
        if "review_at" in values and 0 <= values["review_at"] > values["match_at"]:
            problems.append(("review_at", "must not be above match_at"))
        return problems

    return finish


def _notify_key(values: dict[str, Any], ctx: Context) -> list[tuple[str, str]]:
    values["key"] = None
    return _secret(values, "key_file", "key")


def _secret(values: dict[str, Any], key: str, into: str) -> list[tuple[str, str]]:
    """The text of the file at ``values[key]`` (if one is set) into ``values[into]``."""
    path: Path | None = values[key]
    if path is None:
        return []
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return [(key, f"cannot read {path}: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return [(key, f"{path} is not UTF-8 text")]
    if not text:
        return [(key, f"{path} is empty")]
    values[into] = text
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
        Field("software", STRING, "",
              "the instance's software, for its API: mastodon, gotosocial, pleroma, akkoma, "
              "lemmy or misskey; empty: Sluice does not call its API",
              check=lambda v: one_of(*SOFTWARE)(v) if v else None),
        Field("token_file", OPTIONAL_PATH, "",
              "file with an API token of the instance (or $SLUICE_UPSTREAM_TOKEN)"),
        Field("ban_removes_data", BOOLEAN, False,
              "Lemmy: the `ban` effect also removes the person's posts and comments "
              "(restorable; `purge` deletes for good)"),
        Field("lemmy_api", STRING, "v3",
              "Lemmy's API version: v3 (Lemmy 0.19) or v4 (Lemmy 1.0)",
              check=one_of("v3", "v4")),
    ), "The instance Sluice protects.", finish=_upstream_token),
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
        Field("fresh_signature_seconds", NUMBER, 3000.0,
              "a sender's signature older than this is not replayed: the activity is "
              "re-signed, fetched by the instance, or expires", check=positive),
        Field("accepted_signature_seconds", NUMBER, 3900.0,
              "until this old, what can go no other way is still sent as it came (receivers "
              "may take it: Mastodon does for about 65 minutes); then it expires",
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
        Field("lazy", BOOLEAN, False,
              "deliver at once and check after: a hit runs its effects but is not held"),
    ), "Holding activities until their checks are done."),
    Section("admin", AdminConfig, (
        Field("listen", STRING, "127.0.0.1:9090",
              "HOST:PORT of the admin listener (/metrics, /readyz, the admin API); empty: none",
              check=admin_listen),
        Field("token_file", OPTIONAL_PATH, "",
              "file holding the admin API's bearer token; $SLUICE_ADMIN_TOKEN overrides"),
        Field("session_hours", NUMBER, 12.0,
              "how long a login to the review UI lasts", check=positive),
        Field("secure_cookies", BOOLEAN, True,
              "send the review UI's session cookie over https only (browsers also allow it "
              "on http://localhost); false only for plain http on a trusted network"),
        Field("min_password_length", INTEGER, 12,
              "the fewest characters a person's password may have", check=positive),
        Field("logins_per_name_per_minute", INTEGER, 5,
              "login attempts per account name and minute, in each process", check=positive),
        Field("logins_per_address_per_minute", INTEGER, 20,
              "login attempts per client address and minute, in each process",
              check=positive),
    ), "The admin door: its listener, the admin API and the review UI.", finish=_admin_token),
    Section("review", ReviewConfig, (
        Field("blur", INTEGER, 12,
              "how strongly previews are blurred (Gaussian radius, in pixels of a preview at "
              "most 320 wide); 0: not blurred. Each moderator may choose their own",
              check=at_most(64)),
        Field("greyscale", BOOLEAN, True, "previews in greyscale; each moderator may choose"),
        Field("autoplay", BOOLEAN, False, "revealed video plays by itself"),
        Field("muted", BOOLEAN, True, "revealed video starts muted"),
        Field("reveal_seconds", INTEGER, 60,
              "how long a revealed original may be seen before it is blurred again",
              check=positive),
        Field("exposure_minutes_per_day", INTEGER, 300,
              "minutes a moderator spends in the queue per day before being asked to stop "
              "(the IWF limits its graders to 5 hours)", check=positive),
        Field("reveals_per_day", INTEGER, 100,
              "originals a moderator reveals per day before being asked to stop",
              check=positive),
        Field("break_every_minutes", INTEGER, 60,
              "minutes in the queue after which a break is suggested", check=positive),
        Field("support", STRINGS,
              ("https://www.nctsn.org/resources/coping-with-child-sexual-abuse-material-exposure",
               "https://tsjournal.org/index.php/jots/article/view/91"),
              "links to support for moderators, shown with every break prompt",
              each=http_url),
        Field("page_size", INTEGER, 50, "items per page of the queue", check=positive),
        Field("report_categories", STRINGS, ("csam",),
              "bank categories whose confirmed cases get NCMEC and UK report drafts (every "
              "confirmed case gets a DSA statement of reasons)"),
    ), "The review UI: what protects the moderators who must look."),
    Section("reports", ReportsConfig, (
        Field("contact_name", STRING, "", "the person reports name as the reporter"),
        Field("contact_email", STRING, "", "their email address"),
        Field("contact_phone", STRING, "", "their phone number"),
        Field("instance_name", STRING, "", "the service reported from; empty: the instance's host"),
        Field("instance_url", STRING, "", "its public URL", check=optional_http_url),
        Field("ncmec_url", STRING, "https://exttest.cybertip.org/ispws",
              "NCMEC's CyberTipline API: its test environment until NCMEC approves you, then "
              "https://report.cybertip.org/ispws", check=http_url),
        Field("ncmec_credentials_file", OPTIONAL_PATH, "",
              "file with USERNAME:PASSWORD from NCMEC; $SLUICE_NCMEC_CREDENTIALS overrides; "
              "empty: drafts only, no submit button"),
        Field("dsa_url", STRING, "https://transparency.dsa.ec.europa.eu",
              "the DSA Transparency Database", check=http_url),
        Field("dsa_token_file", OPTIONAL_PATH, "",
              "file with the database's API token; $SLUICE_DSA_TOKEN overrides; empty: "
              "statements are drafts only"),
    ), "Report drafts, and where an admin may submit them (never automatically).",
        finish=_reports_secrets),
    Section("photodna", PhotoDnaConfig, (
        Field("enabled", BOOLEAN, False, "send each picture to PhotoDNA Cloud's Match (paid)"),
        Field("endpoint", STRING, "https://api.microsoftmoderator.com/photodna/v1.0/Match",
              "the Match operation (your region's URI)", check=http_url),
        Field("key_file", OPTIONAL_PATH, "",
              "file with the Ocp-Apim-Subscription-Key; $SLUICE_PHOTODNA_KEY overrides"),
        Field("category", STRING, "csam", "the category of its matches", check=not_empty),
        Field("small", STRING, "upscale",
              "pictures under 160x160: upscale, or skip (unchecked)",
              check=one_of("upscale", "skip")),
        Field("enhance", BOOLEAN, False, "PhotoDNA's enhance: more detection, slower answers"),
        Field("rate_per_second", NUMBER, 5.0, "requests a second (the service allows 5)",
              check=positive),
        Field("timeout_seconds", NUMBER, 10.0,
              "the longest one request may take, and its wait for a turn", check=positive),
        Field("max_answer_bytes", INTEGER, 65_536, "larger answers are errors", check=positive),
        Field("cache_seconds", INTEGER, 86_400,
              "answers kept by the file's SHA-256 (never asked twice meanwhile); keep it at "
              "least [media] cache_seconds", check=not_negative),
        Field("cache_entries", INTEGER, 100_000, "answers kept at most", check=not_negative),
    ), "PhotoDNA Cloud, an external checker (rules name it `photodna`).",
        finish=_checker_secret(PHOTODNA_KEY_ENV, "key_file", "key", "enabled")),
    Section("arachnid", ArachnidConfig, (
        Field("enabled", BOOLEAN, False, "ask Arachnid Shield (C3P) about each file"),
        Field("endpoint", STRING, "https://shield.projectarachnid.com/", "its base URL",
              check=http_url),
        Field("credentials_file", OPTIONAL_PATH, "",
              "file with USERNAME:PASSWORD; $SLUICE_ARACHNID_CREDENTIALS overrides"),
        Field("send", STRING, "bytes",
              "bytes (the file), or pdq (its PDQ hash only: the bytes never leave)",
              check=one_of("bytes", "pdq")),
        Field("rate_per_second", NUMBER, 5.0, "requests a second", check=positive),
        Field("timeout_seconds", NUMBER, 10.0, "the longest one request may take",
              check=positive),
        Field("max_answer_bytes", INTEGER, 262_144, "larger answers are errors",
              check=positive),
        Field("cache_seconds", INTEGER, 86_400, "answers kept by SHA-256",
              check=not_negative),
        Field("cache_entries", INTEGER, 100_000, "answers kept at most", check=not_negative),
    ), "Arachnid Shield, an external checker (rules name it `arachnid`).",
        finish=_checker_secret(
            ARACHNID_CREDENTIALS_ENV, "credentials_file", "credentials", "enabled")),
    Section("classifier", ClassifierConfig, (
        Field("endpoint", STRING, "", "where files are POSTed for a score; empty: none",
              check=optional_http_url),
        Field("token_file", OPTIONAL_PATH, "",
              "file with its token; $SLUICE_CLASSIFIER_TOKEN overrides"),
        Field("token_header", STRING, "Authorization", "the header carrying the token"),
        Field("token_prefix", STRING, "Bearer ", "what precedes the token in it"),
        Field("score_key", STRING, "score", "dotted path of the score in the JSON answer",
              check=not_empty),
        Field("match_at", NUMBER, 0.9, "scores from this up are match signals (never exact)"),
        Field("review_at", NUMBER, -1.0,
              "scores from this up are suspect signals (signal:suspect); negative: none"),
        Field("category", STRING, "csam", "the category of its matches", check=not_empty),
        Field("kinds", STRINGS, ("image",), "media kinds sent",
              each=one_of("image", "video", "audio")),
        Field("rate_per_second", NUMBER, 10.0, "requests a second", check=positive),
        Field("timeout_seconds", NUMBER, 10.0, "the longest one request may take",
              check=positive),
        Field("max_answer_bytes", INTEGER, 65_536, "larger answers are errors",
              check=positive),
        Field("cache_seconds", INTEGER, 86_400, "answers kept by SHA-256",
              check=not_negative),
        Field("cache_entries", INTEGER, 100_000, "answers kept at most", check=not_negative),
    ), "A classifier over HTTP, an external checker (rules name it `classifier`); its "
       "signals are perceptual, never irreversible on their own.",
        finish=_checker_secret(CLASSIFIER_TOKEN_ENV, "token_file", "token", None)),
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
        Field("video_max_seconds", NUMBER, 3600.0,
              "seconds of a video (or an animation) read and hashed; the rest is unchecked",
              check=positive),
        Field("video_time_budget_seconds", NUMBER, 120.0,
              "the longest reading one video may take; past it, the rest is unchecked",
              check=positive),
    ), "Fetching and hashing the media of held activities."),
    Section("evidence", EvidenceConfig, (
        Field("key_file", OPTIONAL_PATH, "",
              "file with the 32-byte AES-GCM key that encrypts quarantined evidence"),
        Field("store", STRING, "local",
              "where the encrypted files go: local (DATA_DIR/evidence) or postgresql (the "
              "database: every Sluice process on every machine reads them)",
              check=one_of("local", "postgresql")),
        Field("keep_days", INTEGER, 365,
              "days evidence is kept unless a jurisdiction asks for longer, or a legal hold "
              "keeps it", check=positive),
        Field("purge_every_seconds", NUMBER, 3600.0,
              "how often evidence past its retention (and not held) is purged", check=positive),
    ), "Evidence kept for quarantined activities."),
    Section("notify", NotifyConfig, (
        Field("webhooks", STRINGS, (), "URLs POSTed a JSON message about verdicts; []: none",
              each=http_url),
        Field("on", STRINGS, ("review", "quarantine"),
              "dispositions that notify whatever the rule (a new review, a quarantine)",
              each=one_of("deliver", "review", "reject", "quarantine")),
        Field("timeout_seconds", NUMBER, 10.0, "the longest one webhook POST may take",
              check=positive),
        Field("admin_url", STRING, "",
              "base URL of links in messages; empty: the admin listener's",
              check=optional_http_url),
        Field("key_file", OPTIONAL_PATH, "",
              "file with the key each message is signed with (HMAC-SHA256)"),
    ), "Telling the admins about verdicts.", finish=_notify_key),
    Section("outbox", OutboxConfig, (
        Field("max_attempts", INTEGER, 10, "tries of an effect before it is a dead letter",
              check=positive),
        Field("backoff_initial_seconds", NUMBER, 5.0, "first retry delay of an effect",
              check=positive),
        Field("backoff_max_seconds", NUMBER, 3600.0, "longest retry delay of an effect",
              check=positive),
    ), "Running the effects of verdicts (notify…).", finish=_backoff_order),
    Section("upload", UploadConfig, (
        Field("on_error", STRING, "refuse",
              "an upload that cannot be checked: refuse (fail closed) or accept (fail open)",
              check=one_of("refuse", "accept")),
        Field("max_bytes", INTEGER, 41_943_040,
              "largest upload checked (40 MiB); larger ones are refused with 413",
              check=positive),
        Field("timeout_seconds", NUMBER, 20.0,
              "the longest checking one upload may take; then on_error decides",
              check=positive),
        Field("concurrency", INTEGER, 4,
              "uploads read and checked at once (each up to max_bytes in memory)",
              check=positive),
        Field("lazy", BOOLEAN, False,
              "pass uploads on at once and check after: a hit runs its effects, refuses nothing"),
    ), "Checking what local users upload (pict-rs's hook and the upload APIs)."),
    Section("outbound", OutboundConfig, (
        Field("listen", STRING, "",
              "HOST:PORT of the forward proxy the instance sends its HTTP(S) through; "
              "empty: none", check=admin_listen),
        Field("tunnel", STRINGS, (),
              "hosts passed through untouched, not intercepted (names, or *.name)",
              each=tunnel_host),
        Field("trust_file", OPTIONAL_PATH, "",
              "PEM CA certificates trusted for remote servers besides the system store"),
        Field("read_timeout_seconds", NUMBER, 60.0,
              "the longest a remote server may leave a proxied request without a byte",
              check=positive),
        Field("max_connections", INTEGER, 512,
              "connections from the instance at once; more get 503", check=positive),
        Field("delivery_max_age_seconds", NUMBER, 3600.0,
              "the longest after signing that the instance's delivery is still sent; "
              "then it is dead-lettered (remotes refuse old signatures)", check=positive),
        Field("media_on_error", STRING, "refuse",
              "remote media that cannot be checked: refuse (fail closed) or accept (fail open)",
              check=one_of("refuse", "accept")),
        Field("media_timeout_seconds", NUMBER, 20.0,
              "the longest checking one fetched file may take; then media_on_error decides",
              check=positive),
        Field("media_concurrency", INTEGER, 4,
              "fetched files checked at once (each up to [media] max_bytes in memory)",
              check=positive),
    ), "The outbound door: Sluice as the instance's forward proxy (deploy/outbound.md)."),
    Section("actor", ActorConfig, (
        Field("base_url", STRING, "",
              "public https URL of Sluice's own actor and receipts (its own host, or a path "
              "the web server routes to Sluice); empty: Sluice has no actor, sends no "
              "receipts and fetches unsigned", check=optional_http_url),
        Field("name", STRING, "sluice", "the actor's preferredUsername (acct:NAME@HOST)",
              check=actor_name),
        Field("key_dir", OPTIONAL_PATH, "",
              "where the actor's keys are kept (mode 0600); empty: DATA_DIR/actor"),
    ), "Sluice's own ActivityPub actor, which signs its fetches, Flags and receipts."),
    Section("receipts", ReceiptsConfig, (
        Field("flag", BOOLEAN, True,
              "tell the origin server what was quarantined: a Flag carrying the receipt"),
        Field("flag_skip_categories", STRINGS, (),
              "bank categories whose origin is never told (telling could tip off an offender)"),
        Field("jurisdictions", STRINGS, (),
              'where the decisions are taken under: ISO 3166-1 alpha-2 codes, or "EU"',
              each=jurisdiction),
        Field("legal_ground", STRING, "",
              "the law the decisions rest on, as receipts say it; empty: by category"),
        Field("appeal", STRING, "", "URL where a decision can be appealed; empty: none",
              check=optional_http_url),
        Field("accept_follows", STRING, "everyone",
              "whose Follow of Sluice's actor is accepted (they get every receipt)",
              check=one_of("everyone", "listed", "nobody")),
        Field("follow_domains", STRINGS, (),
              'the domains accepted when accept_follows = "listed"', each=host_name),
        Field("follow", STRINGS, (), "actors of peers Sluice follows to receive their receipts",
              each=http_url),
    ), "Moderation receipts: what Sluice tells peers, and whom (fep/)."),
    Section("bank", BankConfig, (
        Field("name", STRING, REQUIRED, "the bank's name, as rules and `sluice bank` use it",
              check=bank_name),
        Field("category", STRING, REQUIRED, "what it lists: csam, ncii, terrorism, unwanted…",
              check=not_empty),
        Field("pdq_max_distance", INTEGER, 31, "PDQ matches within this Hamming distance",
              check=at_most(128)),
        Field("dihedral", BOOLEAN, False, "also match rotated and flipped copies"),
        Field("source", STRING, "",
              "where the bank fills itself from, on a schedule: ncmec, stopncii or "
              "threatexchange (pip install sluice[exchanges]); empty: by hand",
              check=one_of("", "ncmec", "stopncii", "threatexchange")),
        Field("source_url", STRING, "", "the source's API base URL; empty: its own",
              check=optional_http_url),
        Field("source_credentials_file", OPTIONAL_PATH, "",
              "file with the source's credentials (ncmec USER:PASSWORD, stopncii "
              "FETCH_KEY,SUBSCRIPTION_KEY, threatexchange APP_ID|TOKEN)"),
        Field("source_environment", STRING, "", "ncmec: the hash-sharing environment"),
        Field("source_privacy_group", STRING, "", "threatexchange: the privacy group"),
        Field("sync_every_seconds", NUMBER, 3600.0, "how often the bank syncs",
              check=positive),
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
    Section("trust", TrustConfig, (
        Field("peer", STRING, REQUIRED, 'the peer\'s domain, or "*" for every peer',
              check=trust_peer),
        Field("categories", STRINGS, ("*",),
              'DSA categories of receipts honoured (STATEMENT_CATEGORY_…), or ["*"]',
              check=not_empty),
        Field("jurisdictions", STRINGS, ("*",),
              'jurisdictions of receipts honoured ("DE", "EU"…), or ["*"]', check=not_empty),
        Field("automated", BOOLEAN, False,
              "honour fully automated decisions too (else a human must have decided)"),
        Field("hashes", BOOLEAN, True,
              "put the receipt's hashes into the bank receipts:PEER, matched like any bank"),
    ), "Peers whose moderation receipts Sluice honours.", array=True),
)

#: Rule targets that are not banks: signals the media checks raise themselves.
SIGNAL_MATCHES = ("signal:unchecked", "signal:suspect")
#: The banks' matcher: a rule naming it fires on a match in any bank.
BANKS_MATCHER = "banks"
#: Matchers a rule may name (external checkers add theirs with their sections).
MATCHERS = (BANKS_MATCHER, "photodna", "arachnid", "classifier")
# fmt: on


# --- what spans tables --------------------------------------------------------


def _relations(built: Mapping[str, Any]) -> list[tuple[KeyPath, str]]:
    """Checks across tables: rules name configured banks; quarantine has its key."""
    found: list[tuple[KeyPath, str]] = []

    def problem(path: KeyPath, message: str) -> None:
        found.append((path, message))

    banks = built.get("bank") or ()
    seen: set[str] = set()
    for index, bank in enumerate(banks):
        if bank.name in seen:
            problem(("bank", index, "name"), f"a bank named `{bank.name}` exists already")
        seen.add(bank.name)
    categories = {b.category for b in banks}
    if built.get("trust"):  # honoured receipts fill banks of these categories
        categories |= set(RECEIPT_CATEGORIES)
    # The external checkers' matches carry categories too.
    if getattr(built.get("photodna"), "enabled", False):
        categories.add(built["photodna"].category)
    if getattr(built.get("arachnid"), "enabled", False):
        categories |= {"csam", "harmful-abusive-material"}
    if getattr(built.get("classifier"), "endpoint", ""):
        categories.add(built["classifier"].category)
    targets = sorted(seen) + [f"category:{c}" for c in sorted(categories)]
    notify = built.get("notify")
    for index, rule in enumerate(built.get("rule") or ()):
        match = rule.match
        known = (
            match in seen
            or match in SIGNAL_MATCHES
            or match in MATCHERS
            or (match.startswith("category:") and match[9:] in categories)
        )
        if not known:
            others = [*SIGNAL_MATCHES, *MATCHERS]
            hint = difflib.get_close_matches(match, targets + others, n=1)
            what = "category" if match.startswith("category:") else "bank"
            message = f"no [[bank]] {what} `{match}`"
            message += (
                f"; did you mean `{hint[0]}`?"
                if hint
                else (f" (configured: {', '.join(targets) or 'none'})")
            )
            problem(("rule", index, "match"), message)
        for effect in rule.effects:
            if effect not in EFFECTS:
                problem(
                    ("rule", index, "effects"),
                    f"no effect `{effect}` (known: {', '.join(EFFECTS)})",
                )
            elif effect == "notify" and notify is not None and not notify.webhooks:
                problem(
                    ("rule", index, "effects"),
                    "notify needs somewhere to send to: set [notify] webhooks",
                )
            elif effect in INSTANCE_EFFECTS and (
                getattr(built.get("upstream"), "software", "mastodon") not in ACTS_ON
                or not getattr(built.get("upstream"), "token", "x")
            ):
                problem(
                    ("rule", index, "effects"),
                    f"`{effect}` acts through the instance's admin API: set [upstream] "
                    f"software ({', '.join(ACTS_ON)}) and token_file (or "
                    f"${UPSTREAM_TOKEN_ENV})",
                )
            elif effect == "receipt" and not getattr(built.get("actor"), "base_url", "x"):
                problem(
                    ("rule", index, "effects"),
                    "a receipt is signed by Sluice's actor: set [actor] base_url",
                )
        if rule.action == "quarantine":
            evidence = built.get("evidence")
            if evidence is not None and evidence.key_file is None:
                problem(
                    ("rule", index, "action"),
                    "quarantine keeps encrypted evidence: set [evidence] key_file",
                )
    actor, receipts = built.get("actor"), built.get("receipts")
    if actor is not None and receipts is not None:
        if actor.base_url and not receipts.jurisdictions:
            problem(
                ("receipts", "jurisdictions"),
                "Sluice's actor signs receipts that name where the decision was taken: "
                'list them, like ["DE"] or ["EU"]',
            )
        if receipts.accept_follows == "listed" and not receipts.follow_domains:
            problem(
                ("receipts", "follow_domains"),
                'accept_follows = "listed" accepts nobody: list domains here, or say "nobody"',
            )
        if not actor.base_url and receipts.follow:
            problem(("receipts", "follow"), "following needs Sluice's actor: set [actor] base_url")
    return found


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
    return build_sections(
        text, file, base=base, environ=environ, schema=schema, relations=_relations
    )


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
        ("notify", "key_file", config.notify.key_file),
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
        return ConfigProblem(config.source, line_of(found, path), dotted(path), message)

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
    for index, bank in enumerate(config.bank):
        if bank.source:
            from relay.banks.sync import SyncError, source_credentials  # as serve reads it

            try:
                source_credentials(bank)
            except SyncError as exc:
                problems.append(locate(("bank", index, "source_credentials_file"), str(exc)))
    admin = config.admin.listen
    if admin and not admin.endswith(":0"):
        host, port = split_listen(admin)
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


def on_failure(config: Config) -> dict[str, str]:
    """What happens, per door and per external checker, when a check cannot decide (a
    service down, a file that cannot be fetched): an admin can always tell, from
    ``sluice check-config`` and ``/readyz``."""
    hold = f"held; what fails goes to [hold] on_error = {config.hold.on_error}"
    lazy = "lazy: delivered at once, checked after (a hit runs the policy's effects)"
    errors = f"its errors are error signals: [hold] on_error = {config.hold.on_error}"
    return {
        "inbound door": lazy if config.hold.lazy else hold,
        "upload door": lazy
        if config.upload.lazy
        else f"checked before storage; undecided: [upload] on_error = {config.upload.on_error}",
        "outbound door": "off"
        if not config.outbound.listen
        else f"media checked; undecided: [outbound] media_on_error = "
        f"{config.outbound.media_on_error}",
        "photodna": errors if config.photodna.enabled else "off",
        "arachnid": errors if config.arachnid.enabled else "off",
        "classifier": errors if config.classifier.endpoint else "off",
    }


def main_check_config(path: str, *, summary: bool = False) -> int:
    """``sluice check-config FILE``: OK on stdout and 0, or the problems on stderr and 1.
    ``summary`` (``--summary``): then, per door and checker, what a failure does.

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
        if summary:
            for part, what in on_failure(config).items():
                print(f"  {part}: {what}")
        return 0
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1
