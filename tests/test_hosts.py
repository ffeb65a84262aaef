"""The instance's names, in every spelling senders use (issue 11: one place decides)."""

from __future__ import annotations

import pytest

from relay.hosts import LocalHosts, split_authority


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://Social.Example/notes/1", "social.example"),
        ("https://social.example:443/x", "social.example"),
        ("http://social.example:80/x", "social.example"),
        ("https://social.example./x", "social.example"),
        ("https://social.example:8443/x", "social.example:8443"),
        ("http://127.0.0.1:3000/x", "127.0.0.1:3000"),
        ("https://[2001:DB8::1]:8443/x", "[2001:db8::1]:8443"),
        ("https://user@social.example/x", "Social.Example:443"),
    ],
)
def test_the_instance_owns_its_urls_in_any_spelling(url: str, host: str) -> None:
    assert LocalHosts([host]).owns(url)
    assert not LocalHosts(["other.example"]).owns(url)


def test_a_port_in_hosts_is_that_port_only() -> None:
    hosts = LocalHosts(["social.example:8443"])
    assert hosts.owns("https://social.example:8443/x")
    assert not hosts.owns("https://social.example/x")
    assert hosts.answers_to("social.example:8443")
    assert not hosts.answers_to("social.example")
    # Without a port, the name on any port.
    assert LocalHosts(["social.example"]).answers_to("Social.Example:8443")


def test_a_default_port_in_hosts_is_the_same_host() -> None:
    """The spelling check-config accepts must not refuse every delivery at the door."""
    hosts = LocalHosts(["social.example:443"])
    assert hosts.answers_to("social.example")
    assert hosts.owns("https://social.example/notes/1")


def test_unconfigured_hosts_answer_to_any_and_own_nothing() -> None:
    assert LocalHosts().answers_to("anything.example")
    assert not LocalHosts().owns("https://anything.example/x")


def test_what_is_not_a_url_is_not_ours() -> None:
    hosts = LocalHosts(["social.example"])
    assert not hosts.owns("http://[::1/x")
    assert not hosts.owns("not a url")


def test_split_authority() -> None:
    assert split_authority("[::1]:8080") == ("::1", "8080")
    assert split_authority("Social.Example.:443") == ("social.example", "")
