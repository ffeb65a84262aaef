"""Malformed inbox requests get a 4xx that says what was wrong, never a 500 (issue 12,
defect 4): deep nesting, content codings, and a seeded fuzzer over everything the
inbound door parses (the JSON body, both signature schemes' headers, dates, digests).

The fuzzer is a seeded generator, not hypothesis: it drives a live Sluice over real
sockets, where each case costs a request and shrinking would cost many more; a seed
replays any failure exactly (SLUICE_FUZZ_SEED, SLUICE_FUZZ_ROUNDS to go further).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import random
import zlib
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest
from yarl import URL

from relay.activity import MAX_DEPTH, parse_activity
from relay.errors import DecodeError, SignatureError
from relay.signature import PublicKey, verify_request
from relay.signature.cavage import parse_signature
from tests.conftest import Actor, Fediverse, Running, Upstream, wait_for
from tests.signature_support import Keys

SEED = int(os.environ.get("SLUICE_FUZZ_SEED", "20261203"))
ROUNDS = int(os.environ.get("SLUICE_FUZZ_ROUNDS", "400"))
PARSER_ROUNDS = int(os.environ.get("SLUICE_FUZZ_PARSER_ROUNDS", "3000"))


# --- raw HTTP: the fuzzer writes bytes no client library would send --------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def explains(self) -> str:
        """What the door said was wrong: our JSON error, or aiohttp's own text for a
        request it refused before any handler ran (a broken header line)."""
        if self.headers.get("content-type", "").startswith("application/json"):
            return str(json.loads(self.body)["error"])
        return self.body.decode("utf-8", "replace")


@dataclass
class Request:
    body: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    target: bytes = b"/inbox"

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def put(self, name: str, value: str | bytes) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value if isinstance(value, bytes) else value.encode()))


async def send(sluice: Running, request: Request) -> Answer:
    url = URL(sluice.url)
    # Every step bounded: a door that stops reading must fail this request, not stall.
    async with asyncio.timeout(30):
        reader, writer = await asyncio.open_connection(url.host, url.port)
        lines = [b"POST " + request.target + b" HTTP/1.1"]
        lines += [k.encode() + b": " + v for k, v in request.headers]
        lines += [f"Content-Length: {len(request.body)}".encode(), b"Connection: close"]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + request.body)
        await writer.drain()
        raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Answer(int(status_line.split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, data = out + data[:n], data[n + 2 :]
    return out


def signed(actor: Actor, body: bytes, *, scheme: str = "cavage", **kwargs: Any) -> Request:
    headers = actor.sign("https://social.example/inbox", body, scheme=scheme, **kwargs)
    return Request(body, [(k, v.encode()) for k, v in headers.items()])


def assert_refused_with_reason(answer: Answer, case: str) -> None:
    assert answer.status < 500, (case, answer.status, answer.body[:300])
    if answer.status >= 400:
        assert answer.explains().strip(), (case, answer.status, answer.body[:300])


# --- the defects as reported -------------------------------------------------------------


@pytest.mark.parametrize(
    ("opening", "closing"), [(b"[", b"]"), (b'{"a":', b"}"), (b'{"object":[{"a":', b"}]}")]
)
async def test_deeply_nested_json_is_a_400(
    sluice: Running, fediverse: Fediverse, opening: bytes, closing: bytes
) -> None:
    carol = fediverse.actor("carol")
    for depth in (MAX_DEPTH + 1, 3000, 50_000):
        body = opening * depth + b"1" + closing * depth
        answer = await send(sluice, signed(carol, body))
        assert answer.status == 400, (depth, answer.body[:200])
        assert answer.explains() == f"body nests deeper than {MAX_DEPTH} levels"


async def test_an_activity_nested_within_the_limit_is_accepted(
    sluice: Running, fediverse: Fediverse, upstream: Upstream
) -> None:
    carol = fediverse.actor("carol")
    activity = carol.activity()
    deep: Any = "bottom"
    for _ in range(MAX_DEPTH - 3):
        deep = {"a": deep}
    activity["object"]["deep"] = deep
    answer = await send(sluice, signed(carol, json.dumps(activity).encode()))
    assert answer.status == 202, answer.body
    [got] = await wait_for(upstream.inbox_posts)
    assert got.json()["id"] == activity["id"]


def _compressed(coding: str, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    import brotli  # aiohttp's own extra; skip br when it is not installed

    return brotli.compress(body)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "x-gzip", "zstd", "gzip, br"])
@pytest.mark.parametrize("matching", [False, True])
async def test_a_content_coded_body_is_a_415(
    sluice: Running, fediverse: Fediverse, upstream: Upstream, coding: str, matching: bool
) -> None:
    """Refused, matching or not: a digest covers the bytes as sent, the instance expects
    what was signed, and no fediverse server compresses what it POSTs."""
    carol = fediverse.actor("carol")
    plain = json.dumps(carol.activity()).encode()
    if matching:
        first = coding.split(",")[0].strip().removeprefix("x-")
        if first == "zstd":
            pytest.skip("nothing here writes zstd")
        try:
            body = _compressed(first, plain)
        except ImportError:
            pytest.skip("brotli is not installed")
    else:
        body = plain  # what the fuzzer sent: a coding the body does not match
    request = signed(carol, body, headers={"Content-Encoding": coding})
    answer = await send(sluice, request)
    # The server leaves bodies as sent (auto_decompress off), so the door answers every
    # coding itself, br and zstd included, whatever aiohttp could decode.
    assert answer.status == 415, answer.body[:200]
    assert answer.headers["accept-encoding"] == "identity"
    assert answer.explains() == f"Content-Encoding {coding!r} is not accepted; send the body as is"
    assert upstream.requests == []

    request = signed(carol, plain, headers={"Content-Encoding": "identity"})
    assert (await send(sluice, request)).status == 202


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": "https://[x/1"}, "'https://[x/1' is not a URL"),
        ({"id": "{host}/activities/\u0000"}, "activity `id` contains a NUL character"),
        ({"id": "{host}/activities/\ud800"}, "activity `id` contains an unpaired surrogate"),
        ({"type": "Cre\u0000ate"}, "activity `type` contains a NUL character"),
        ({"object": "{host}/notes/\udfff"}, "activity `object` contains an unpaired surrogate"),
    ],
)
async def test_fields_the_database_cannot_store_are_a_400(
    sluice: Running, fediverse: Fediverse, change: dict[str, str], reason: str
) -> None:
    """Signed and valid JSON, but no text column takes a NUL or a lone surrogate."""
    carol = fediverse.actor("carol")
    host = str(URL(carol.id).origin())
    activity = {**carol.activity(), **{k: v.format(host=host) for k, v in change.items()}}
    answer = await send(sluice, signed(carol, json.dumps(activity).encode()))
    assert (answer.status, answer.explains()) == (400, reason)


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "Create", "n": ' + b"9" * 5000 + b"}",  # over Python's int digits limit
        b'{"type": "Create", "n": NaN}',
        b'{"type": "Create", "n": -Infinity}',
        b'{"type": "Cr\xffate"}',  # no UTF-8
    ],
)
async def test_json_python_would_not_take_is_a_400(
    sluice: Running, fediverse: Fediverse, body: bytes
) -> None:
    answer = await send(sluice, signed(fediverse.actor("carol"), body))
    assert answer.status == 400, answer.body[:200]
    assert answer.explains().startswith("body is not valid JSON: ")


def _sign_with(actor: Actor, **params: str) -> Request:
    """A signed delivery with some Signature parameters replaced (the value kept)."""
    request = signed(actor, json.dumps(actor.activity()).encode())
    signature = dict(p.split("=", 1) for p in request.header("Signature").decode().split(","))
    signature.update({k: f'"{v}"' for k, v in params.items()})
    request.put("Signature", ",".join(f"{k}={v}" for k, v in signature.items()))
    return request


async def test_what_the_fuzzer_found_in_headers_is_a_4xx(
    sluice: Running, fediverse: Fediverse
) -> None:
    carol = fediverse.actor("carol")
    body = json.dumps(carol.activity()).encode()

    request = signed(carol, body)
    request.put("X-Odd", b"caf\xe9")  # latin-1, kept by aiohttp as a surrogate
    answer = await send(sluice, request)
    assert (answer.status, answer.explains()) == (400, "header `X-Odd` is not UTF-8 text")

    for target in (b"/inbox\xff", b"/inbox?q=\xc3("):
        request = signed(carol, body)
        request.target = target
        answer = await send(sluice, request)
        # aiohttp's C parser refuses it before the door can; the door would too.
        assert answer.status == 400, answer.body
        reason = answer.explains()
        assert reason == "request target is not UTF-8 text" or reason.startswith("Invalid char")

    answer = await send(sluice, _sign_with(carol, keyId="https://["))
    assert (answer.status, answer.explains()) == (
        401,
        "signature not accepted: key id 'https://[' is not a URL",
    )

    request = signed(carol, body)
    request.put("Date", "Mon, 01 Jan 99999 00:00:00 GMT")
    answer = await send(sluice, request)
    assert (answer.status, answer.explains()) == (
        401,
        "signature not accepted: Date is missing or not an HTTP date",
    )

    for created in ("nan", "inf"):  # nan would pass every comparison with the clock
        answer = await send(
            sluice,
            _sign_with(carol, created=created, headers="(request-target) host (created) digest"),
        )
        assert (answer.status, answer.explains()) == (
            401,
            "signature not accepted: `created` is not a number",
        )

    answer = await send(
        sluice, _sign_with(carol, headers="(request-target) host date digest (expires)")
    )
    assert (answer.status, answer.explains()) == (
        401,
        "signature not accepted: signature covers `(expires)` but has no `expires`",
    )


# --- the fuzzer ------------------------------------------------------------------------


_JUNK = [
    "",
    " ",
    ",",
    "=",
    '"',
    "\\",
    ";",
    "()",
    "(",
    ":",
    "::",
    ":!!:",
    "?1",
    "?0",
    "-1",
    "0",
    "1e999",
    "nan",
    "inf",
    "-inf",
    "99999999999999999999999",
    "\u00e9",
    "\u2603",
    "%00",
    "[",
    "]",
    "https://[",
    "x" * 5000,
]


class Fuzzer:
    """Seeded mutations of a validly signed delivery: one or two things broken at a time,
    so that every parser down the line is reached, not only the first."""

    def __init__(self, rng: random.Random, actor: Actor, stranger: str) -> None:
        self.rng = rng
        self.actor = actor
        self.stranger = stranger  # a key id on the loopback fediverse that answers 404
        self.elsewhere = [
            stranger,
            "x",
            "https://[",
            "https://[::1]:x/k",
            "https://%zz/k",
            "http://127.0.0.1:1/k",
            "https://a b/k",
            "urn:x",
            "data:,x",
            "file:///etc/passwd",
        ]

    def junk(self) -> str:
        r = self.rng
        pick = r.random()
        if pick < 0.4:
            return r.choice(_JUNK)
        if pick < 0.7:
            return "".join(r.choice(_JUNK[:20]) for _ in range(r.randint(1, 6)))
        alphabet = "abcAZ09 ,;=\"'()[]{}:?!*#@/\\\t-_.+%\u00e9"
        return "".join(r.choice(alphabet) for _ in range(r.randint(0, 40)))

    def raw_junk(self) -> bytes:
        """Bytes for a header value, some of them no UTF-8."""
        r = self.rng
        if r.random() < 0.5:
            return self.junk().encode()
        return bytes(r.choice([*range(0x20, 0x7F), *range(0x80, 0x100), 0x09]) for _ in range(20))

    # - bodies -

    def body(self) -> tuple[bytes, str]:
        r = self.rng
        activity = self.actor.activity()
        kind = r.randrange(12)
        if kind == 0:
            depth = r.choice([MAX_DEPTH, MAX_DEPTH + 1, 999, 1001, r.randint(2, 20_000)])
            opening, closing = r.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"b":', b"}]")])
            return opening * depth + b"0" + closing * depth, f"nested {depth}"
        if kind == 1:
            good = json.dumps(activity).encode()
            cut = r.randrange(len(good))
            return good[:cut], f"truncated at {cut}"
        if kind == 2:
            return bytes(r.randrange(256) for _ in range(r.randint(0, 300))), "random bytes"
        if kind == 3:
            text = json.dumps(activity)
            encoding = r.choice(["utf-16", "utf-16-le", "utf-32", "latin-1"])
            return text.replace('"Create"', '"Cr\u00e9ate"').encode(encoding), encoding
        if kind == 4:
            value = r.choice(
                ["9" * 5000, "NaN", "Infinity", "-Infinity", "1e999", "-0", "1" * 4300]
            )
            return json.dumps(activity).replace(
                '"Create"', '"Create", "n": ' + value, 1
            ).encode(), value
        if kind == 5:
            return r.choice([b"[]", b"null", b'"x"', b"1", b"{}", b"", b" "]), "not an object"
        if kind == 6:
            name = r.choice(["id", "actor", "type", "object"])
            value = r.choice(["\u0000", "\ud800", "\udfff", "\ufffe", "[", "https://[", "://", ""])
            current = activity.get(name)
            activity[name] = (current if isinstance(current, str) else "") + value
            return json.dumps(activity).encode(), f"{name} with {value!r}"
        if kind == 7:
            name = r.choice(["id", "actor", "type", "object"])
            activity[name] = r.choice([1, None, True, [], [1, 2], {}, {"id": 5}, ["a", "b"], 1.5])
            return json.dumps(activity).encode(), f"{name} of another type"
        if kind == 8:
            text = json.dumps(activity)
            return (text[:-1] + ', "type": "Delete"}').encode(), "duplicate key"
        if kind == 9:
            activity["object"] = {"id": self.junk(), "type": self.junk(), "attachment": self.junk()}
            return json.dumps(activity).encode(), "odd object"
        if kind == 10:
            return b'{"a":"\\ud800\\udc00\\u0000\\uZZZZ"}', "bad escape"
        return json.dumps(activity).encode(), "valid"

    # - headers -

    def mutate_cavage(self, request: Request) -> str:
        r = self.rng
        signature = (request.header("Signature") or b"").decode("latin-1")
        params = dict(p.split("=", 1) for p in signature.split(",") if "=" in p)
        choice = r.randrange(6)
        if choice == 0:
            name = r.choice(["keyId", "algorithm", "headers", "signature", "created", "expires"])
            params[name] = f'"{self.junk()}"' if r.random() < 0.7 else self.junk()
            what = f"cavage {name}"
        elif choice == 1:
            params["keyId"] = f'"{r.choice(self.elsewhere)}"'
            what = "cavage keyId elsewhere"
        elif choice == 2:
            params[self.junk() or "x"] = self.junk()
            what = "cavage extra parameter"
        elif choice == 3:
            covered = ["(request-target)", "host", "date", "digest", "(created)", "(expires)"]
            picked = r.sample(covered, r.randint(0, 6)) + [self.junk()] * r.randint(0, 2)
            params["headers"] = '"' + " ".join(picked) + '"'
            params["created"] = r.choice(["1700000000", "nan", "inf", "-1e308", "x"])
            what = "cavage coverage"
        elif choice == 4:
            request.put("Signature", self.raw_junk())
            return "cavage header junk"
        else:
            request.put("Authorization", b"Signature " + signature.encode())
            request.headers = [(k, v) for k, v in request.headers if k != "Signature"]
            return "cavage in Authorization"
        request.put("Signature", ",".join(f"{k}={v}" for k, v in params.items()))
        return what

    def mutate_rfc9421(self, request: Request) -> str:
        r = self.rng
        choice = r.randrange(5)
        label = r.choice(["sig1", "x", "*", "1", ""])
        if choice == 0:
            created = r.choice(["1700000000", "1.5", '"now"', "?1", "-1", "9" * 16, ":AA==:"])
            components = r.choice(['("@method" "@target-uri")', '("@method")', "()", "x", "(1 2)"])
            key_id = r.choice(['"x"', f'"{self.stranger}"', "1", f'"{self.actor.key_id}"'])
            params = f";created={created};keyid={key_id}"
            if r.random() < 0.5:
                params += ";alg=" + r.choice(['"ed25519"', '"hmac-sha256"', "x", "1"])
            if r.random() < 0.3:
                params += ";expires=" + r.choice(["1", '"x"', "?0", "1.5"])
            request.put("Signature-Input", f"{label}={components}{params}")
            return "rfc9421 Signature-Input"
        if choice == 1:
            request.put("Signature", f"{label}={r.choice([':AA==:', ':!!:', 'x', '(a)', '1'])}")
            return "rfc9421 Signature"
        if choice == 2:
            request.put(r.choice(["Signature-Input", "Signature"]), self.raw_junk())
            return "rfc9421 junk"
        if choice == 3:
            request.put(
                "Content-Digest",
                r.choice(
                    [
                        "sha-256=:AA==:",
                        "sha-256=x",
                        "sha-512=:!!:",
                        "md5=:AA==:",
                        "",
                        "sha-256=:" + "A" * 8 + ":, sha-256=1",
                        self.junk(),
                    ]
                ),
            )
            return "rfc9421 Content-Digest"
        request.put("Signature-Input", request.header("Signature-Input") + b", " + self.raw_junk())
        return "rfc9421 second input"

    def mutate_common(self, request: Request) -> str:
        r = self.rng
        choice = r.randrange(7)
        if choice == 6:
            request.target = r.choice(
                [
                    b"/inbox\xff",
                    b"/inbox?\xc3(",
                    b"//inbox",
                    b"/inbox/../inbox",
                    b"/inbox?a=%zz",
                    b"/users/carol/inbox",
                    b"/inbox%00",
                    b"/in%ffbox",
                    b"*",
                    b"/inbox#x",
                ]
            )
            return f"target {request.target!r}"
        if choice == 0:
            request.put(
                "Date",
                r.choice(
                    [
                        "",
                        "0",
                        "yesterday",
                        "Mon, 01 Jan 99999 00:00:00 GMT",
                        "Mon, 01 Jan 0000 00:00:00 GMT",
                        "Mon, 32 Foo 2024 25:61:61 +9999",
                        "Tue, 3 Dec 2026 08:00:00 -2400",
                        "Thu, 01 Jan 1970 00:00:00 GMT",
                        formatdate(r.choice([0, 2**33, 253402300799]), usegmt=True),
                        self.junk(),
                    ]
                ),
            )
            return "Date"
        if choice == 1:
            body = request.body
            request.put(
                "Digest",
                r.choice(
                    [
                        "SHA-256=",
                        "SHA-256=!!!",
                        "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()[:5]).decode(),
                        "sha-512=" + "A" * 88,
                        "md5=x",
                        "SHA-256",
                        "=",
                        self.junk(),
                        "SHA-256=\u00e9",
                    ]
                ),
            )
            return "Digest"
        if choice == 2:
            request.put(
                "Content-Encoding",
                r.choice(["gzip", "deflate", "br", "zstd", "identity", "gzip, identity", "x", ""]),
            )
            return "Content-Encoding"
        if choice == 3:
            request.put(
                "Content-Type",
                r.choice([self.junk(), "application/activity+json; charset=utf-16", "text/plain"]),
            )
            return "Content-Type"
        if choice == 4:
            request.put(
                "Host",
                r.choice(
                    [
                        "[",
                        "a:b:c",
                        "",
                        "[::1",
                        "social.example:99999",
                        "\u00e9.example",
                        "social.example.",
                    ]
                ),
            )
            return "Host"
        request.put(
            r.choice(["X-Odd", "Accept", "User-Agent", "X-Real-IP", "X-Forwarded-For"]),
            self.raw_junk(),
        )
        return "an unsigned header"

    def case(self) -> tuple[Request, str]:
        r = self.rng
        scheme = r.choice(["cavage", "rfc9421"])
        body, what = (
            self.body()
            if r.random() < 0.4
            else (json.dumps(self.actor.activity()).encode(), "valid")
        )
        request = signed(self.actor, body, scheme=scheme)
        steps = [what]
        for _ in range(r.randint(0 if what != "valid" else 1, 2)):
            mutate = r.choice(
                [
                    self.mutate_common,
                    self.mutate_cavage if scheme == "cavage" else self.mutate_rfc9421,
                ]
            )
            steps.append(mutate(request))
        return request, f"{scheme}: " + ", ".join(steps)


async def test_fuzzed_inbox_requests_never_get_a_5xx(
    sluice_factory: Any, fediverse: Fediverse, upstream: Upstream
) -> None:
    # Generous per-sender budgets: the fuzzer is one client sending many unknown keys.
    sluice = await sluice_factory()
    carol = fediverse.actor("carol")
    fuzzer = Fuzzer(random.Random(SEED), carol, f"{fediverse.base}/users/nobody#main-key")
    statuses: dict[int, int] = {}
    for round_ in range(ROUNDS):
        request, case = fuzzer.case()
        answer = await send(sluice, request)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        assert_refused_with_reason(answer, f"seed {SEED} round {round_}: {case}")
    # Still standing, and still delivering.
    good = carol.activity()
    assert (await send(sluice, signed(carol, json.dumps(good).encode()))).status == 202
    assert len(statuses) > 3, statuses  # the mutations reached several outcomes


# --- the parsers, called directly: many more cases per second ------------------------


async def test_fuzzed_parsers_raise_only_their_own_errors(fediverse: Fediverse) -> None:
    """The same cases against parse_activity and verify_request, with the key at hand."""
    signer = fediverse.actor("alice")
    keys = Keys(PublicKey(id=signer.key_id, owner=signer.id, key=signer.key.public_key()))
    fuzzer = Fuzzer(random.Random(SEED + 1), signer, "https://b.example/users/x#k")
    for round_ in range(PARSER_ROUNDS):
        request, case = fuzzer.case()
        where = f"seed {SEED + 1} round {round_}: {case}"
        try:
            parse_activity(request.body)
        except DecodeError as exc:
            assert str(exc), where
        headers = {k: v.decode("utf-8", "surrogateescape") for k, v in request.headers}
        try:
            parse_signature(headers.get("Signature", ""))
        except SignatureError as exc:
            assert str(exc), where
        try:
            target = request.target.decode("utf-8", "surrogateescape")
            await verify_request("POST", target, headers, request.body, keys)
        except SignatureError as exc:
            assert str(exc), where
