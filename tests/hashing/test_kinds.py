"""The contract every registered hash kind keeps, run over all of them.

A new kind in relay.hashing.KINDS is tested here as soon as it has examples in
EXAMPLES; the test that every kind has examples fails until then.
"""

from __future__ import annotations

import pytest

from relay.hashing import KINDS, HashKind, Md5, Pdq, Sha256, _register, kind

# Per kind: two different valid hashes, in canonical form.
EXAMPLES: dict[str, tuple[str, str]] = {
    "sha256": (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    ),
    "md5": ("d41d8cd98f00b204e9800998ecf8427e", "5d41402abc4b2a76b9719d911017c592"),
    "pdq": (
        "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22",
        "b0a10efd71cc3f429413d48d0ffffe12e34e0e17ada952a9d29684210aa9e5af",
    ),
}


def not_hashes(good: str) -> list[object]:
    """Near misses of ``good`` that every kind must refuse."""
    return [
        "",
        "   ",
        good[:-1],  # one digit short
        good + "0",  # one digit long
        good[:-1] + "g",  # not hex
        "0x" + good[2:],
        good[:-1] + "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit, not hex
        good[: len(good) // 2] + " " + good[len(good) // 2 + 1 :],
        None,
        good.encode(),
    ]


@pytest.fixture(params=sorted(KINDS), ids=str)
def hash_kind(request: pytest.FixtureRequest) -> type[HashKind]:
    return KINDS[request.param]


def test_every_kind_has_examples() -> None:
    assert set(EXAMPLES) == set(KINDS)


def test_registry_and_lookup(hash_kind: type[HashKind]) -> None:
    assert hash_kind.name == hash_kind.name.lower().strip()
    assert kind(hash_kind.name) is hash_kind
    assert isinstance(hash_kind.exact, bool)
    # Exact kinds match only equal hashes; near kinds need a radius above 0.
    assert (hash_kind.threshold == 0) == hash_kind.exact


def test_validate_canonicalises(hash_kind: type[HashKind]) -> None:
    a, b = EXAMPLES[hash_kind.name]
    for value in (a, b):
        assert hash_kind.validate(value) == value
        assert hash_kind.validate(f"  {value.upper()}\n") == value


def test_validate_refuses(hash_kind: type[HashKind]) -> None:
    a, _ = EXAMPLES[hash_kind.name]
    for bad in not_hashes(a):
        with pytest.raises(ValueError, match=r"^not a .* hash"):
            hash_kind.validate(bad)  # type: ignore[arg-type]


def test_distance(hash_kind: type[HashKind]) -> None:
    a, b = EXAMPLES[hash_kind.name]
    assert hash_kind.distance(a, a) == 0
    assert hash_kind.distance(a, a.upper()) == 0
    assert hash_kind.distance(a, b) == hash_kind.distance(b, a) > 0
    if hash_kind.exact:
        assert hash_kind.distance(a, b) == 1
    with pytest.raises(ValueError):
        hash_kind.distance(a, "nonsense")


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown hash kind .photodna. .*md5, pdq, sha256"):
        kind("photodna")


def test_names_must_be_unique() -> None:
    class Other(Md5):
        pass

    assert _register([Sha256, Md5])["md5"] is Md5
    with pytest.raises(ValueError, match="'md5' registered twice"):
        _register([Sha256, Md5, Other])


def test_pdq_distance_is_hamming() -> None:
    a = "0" * 64
    assert Pdq.distance(a, "f" * 64) == 256
    assert Pdq.distance(a, "0" * 63 + "1") == 1
    assert Pdq.distance(a, "8" + "0" * 63) == 1  # the most significant bit counts too
    assert Pdq.distance(a, "0123456789abcdef" * 4) == 128  # 32 bits set per 16 digits
    # The C++ reference hashes of the bridge photo and its quarter turn.
    pdq_a, pdq_b = EXAMPLES["pdq"]
    assert Pdq.distance(pdq_a, pdq_b) == 124


def test_pdq_error_names_the_kind() -> None:
    with pytest.raises(ValueError, match=r"^not a PDQ hash: 'abc' \(want 64 hex digits\)$"):
        Pdq.validate("abc")
