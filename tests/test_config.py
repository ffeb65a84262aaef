"""The configuration file: schema, defaults, located problems, the example file."""

from __future__ import annotations

import dataclasses
import os
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay import config as config_module
from relay.config import (
    INTEGER,
    REQUIRED,
    SCHEMA,
    STRING,
    Config,
    Field,
    Section,
    check_config,
    config_warnings,
    load_config,
    locate_keys,
    main_check_config,
    one_of,
    parse,
)
from relay.errors import ConfigError, ConfigProblem

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "sluice.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def check(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    """The file's name and its problems."""
    path = write(tmp_path, text)
    return str(path), check_config(path, environ=environ or {})


# --- defaults and the example ------------------------------------------------


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={})
    assert config.source == "<defaults>"
    assert config.server.listen == "127.0.0.1:8080"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.server.max_body_bytes == 1_048_576
    assert config.server.inbox_paths[:2] == ("/inbox", "/users/*/inbox")
    assert len(config.server.inbox_paths) == 10
    assert config.upstream.url == "http://127.0.0.1:3000"
    assert config.upstream.timeout_seconds == 30.0
    assert config.database.url == ""
    assert config.storage.data_dir == tmp_path.resolve() / "sluice-data"
    assert config.network.allow == ()
    assert config.signatures.require is True
    assert config.delivery.backoff_max_seconds == 600.0
    assert config.hold.on_timeout == "review"
    assert config.admin.token_file is None
    assert config.admin.token is None
    assert config.log.level == "info"


def test_defaults_are_frozen():
    config = load_config(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_example_equals_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    example = load_config(EXAMPLE, environ={})
    defaults = load_config(None, environ={})
    assert example.source == str(EXAMPLE)
    assert example.storage.data_dir == ROOT / "sluice-data"
    assert defaults.storage.data_dir == tmp_path.resolve() / "sluice-data"
    same_base = dataclasses.replace(example.storage, data_dir=defaults.storage.data_dir)
    assert dataclasses.replace(example, storage=same_base, source="") == dataclasses.replace(
        defaults, source=""
    )


def test_example_documents_every_key():
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    lines = text.splitlines()
    found = locate_keys(text)
    for section in SCHEMA:
        if section.array:
            # Examples, commented out: the defaults have no banks and no rules.
            assert f"# {section.header}" in lines, section.header
            for spec in section.fields:
                assert any(line.startswith(f"# {spec.name} = ") for line in lines), spec.name
            continue
        assert section.name in data, section.name
        for spec in section.fields:
            assert spec.name in data[section.name], f"{section.name}.{spec.name}"
            # A comment block above the key, naming the default.
            line = found[(section.name, spec.name)] - 1  # 0-based
            comment = []
            while line > 0 and lines[line - 1].startswith("#"):
                line -= 1
                comment.append(lines[line])
            assert comment, f"{section.name}.{spec.name} has no comment"
            assert any("Default" in c for c in comment), f"{section.name}.{spec.name}"
    assert set(data) == {s.name for s in SCHEMA if not s.array}


def test_example_header_guides_the_admin():
    head = EXAMPLE.read_text(encoding="utf-8")[:1000]
    assert "sluice check-config" in head
    assert "upstream.url" in head


def test_schema_matches_the_dataclasses():
    config_fields = {f.name for f in dataclasses.fields(Config)}
    assert config_fields == {s.name for s in SCHEMA} | {"source"}
    derived = {
        "admin": {"token"},
        "notify": {"key"},
        "upstream": {"token"},
        "reports": {"ncmec_credentials", "dsa_token"},
        "photodna": {"key"},
        "arachnid": {"credentials"},
        "classifier": {"token"},
    }
    for section in SCHEMA:
        names = {f.name for f in dataclasses.fields(section.type)}
        assert names == {f.name for f in section.fields} | derived.get(section.name, set())


# --- values ------------------------------------------------------------------


def test_full_file(tmp_path):
    path = write(
        tmp_path,
        """
        [server]
        listen = "[::1]:8443"
        max_body_bytes = 2000
        inbox_paths = ["/inbox"]

        [upstream]
        url = "https://social.example:8443/"
        timeout_seconds = 12          # an integer where a float is expected
        concurrency = 4

        [database]
        url = "postgresql://sluice@db/sluice"
        pool_size = 3

        [storage]
        data_dir = "/var/lib/sluice"

        [network]
        allow = ["10.0.0.0/8", "fd00::/8"]
        allow_http = true
        connect_timeout_seconds = 1
        read_timeout_seconds = 2.5
        max_redirects = 0

        [signatures]
        require = false
        max_age_seconds = 600
        clock_skew_seconds = 0
        key_cache_seconds = 0

        [delivery]
        max_age_seconds = 3600
        backoff_initial_seconds = 2
        backoff_max_seconds = 2
        dedup_window_seconds = 60
        lease_seconds = 5

        [hold]
        max_seconds = 10
        on_timeout = "reject"

        [log]
        level = "debug"
        """,
    )
    config = load_config(path, environ={})
    assert config.source == str(path)
    assert (config.server.host, config.server.port) == ("::1", 8443)
    assert config.server.inbox_paths == ("/inbox",)
    assert config.upstream.timeout_seconds == 12.0
    assert isinstance(config.upstream.timeout_seconds, float)
    assert config.database.url == "postgresql://sluice@db/sluice"
    assert config.storage.data_dir == Path("/var/lib/sluice")
    assert config.network.allow == ("10.0.0.0/8", "fd00::/8")
    assert isinstance(config.network.connect_timeout_seconds, float)
    assert config.network.max_redirects == 0
    assert config.signatures.require is False
    assert config.delivery.lease_seconds == 5.0
    assert config.hold.on_timeout == "reject"
    assert config.log.level == "debug"


def test_dotted_keys_and_inline_tables(tmp_path):
    path = write(
        tmp_path,
        """
        server.listen = "0.0.0.0:80"
        hold = { on_timeout = "deliver", max_seconds = 5 }
        """,
    )
    config = load_config(path, environ={})
    assert config.server.port == 80
    assert config.hold == config_module.HoldConfig(
        max_seconds=5.0, on_timeout="deliver", on_error="review"
    )


def test_relative_data_dir_is_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[storage]\ndata_dir = "../data"\n')
    assert load_config(path, environ={}).storage.data_dir == tmp_path.resolve() / "data"
    # A relative path to the file itself works the same way.
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/sluice.toml", environ={})
    assert config.storage.data_dir == tmp_path.resolve() / "data"
    assert config.source == "etc/sluice.toml"


def test_home_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write(tmp_path, '[storage]\ndata_dir = "~/sluice"\n')
    assert load_config(path, environ={}).storage.data_dir == tmp_path.resolve() / "sluice"


def test_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes('\ufeff[log]\nlevel = "error"\n'.encode())
    assert load_config(path, environ={}).log.level == "error"


# --- the environment ---------------------------------------------------------


def test_database_url_from_environment(tmp_path):
    path = write(tmp_path, '[database]\nurl = "postgresql://file/db"\n')
    env = {"SLUICE_DATABASE_URL": "postgresql://user:secret@env/db"}
    config = load_config(path, environ=env)
    assert config.database.url == "postgresql://user:secret@env/db"
    assert "secret" not in repr(config)
    assert load_config(path, environ={"SLUICE_DATABASE_URL": ""}).database.url == (
        "postgresql://file/db"
    )
    assert load_config(None, environ=env).database.url == "postgresql://user:secret@env/db"


def test_database_url_from_environment_is_checked(tmp_path):
    _file, problems = check(tmp_path, "", environ={"SLUICE_DATABASE_URL": "mysql://x/y"})
    assert problems == [
        ConfigProblem(
            "$SLUICE_DATABASE_URL",
            None,
            "database.url",
            "must be a postgresql:// URL, or empty for the embedded database",
        )
    ]


def test_os_environ_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_DATABASE_URL", "postgres://env/db")
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "from-env")
    config = load_config(None)
    assert config.database.url == "postgres://env/db"
    assert config.admin.token == "from-env"


def test_admin_token_from_file(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin").write_text("  s3cret\n", encoding="utf-8")
    path = write(tmp_path, '[admin]\ntoken_file = "secrets/admin"\n')
    config = load_config(path, environ={})
    assert config.admin.token_file == tmp_path.resolve() / "secrets" / "admin"
    assert config.admin.token == "s3cret"
    assert "s3cret" not in repr(config)
    # The environment wins, and the file is then not needed.
    (tmp_path / "secrets" / "admin").unlink()
    assert load_config(path, environ={"SLUICE_ADMIN_TOKEN": "env"}).admin.token == "env"


def test_admin_token_file_problems(tmp_path):
    token = tmp_path / "token"
    file, problems = check(tmp_path, '[admin]\ntoken_file = "token"\n')
    assert problems == [
        ConfigProblem(
            file, 2, "admin.token_file", f"cannot read {token}: No such file or directory"
        )
    ]
    token.write_text("\n", encoding="utf-8")
    file, problems = check(tmp_path, '[admin]\ntoken_file = "token"\n')
    assert problems == [ConfigProblem(file, 2, "admin.token_file", f"{token} is empty")]


# --- problems, one of each kind ----------------------------------------------

CASES = [
    # (file text, line, key, message)
    (
        '[network]\nalow = ["10.0.0.0/8"]\n',
        2,
        "network.alow",
        "unknown key `alow`; did you mean `allow`?",
    ),
    ("[server]\nflavour = 1\n", 2, "server.flavour", "unknown key `flavour`"),
    (
        '[server]\nurl = "http://x"\n',
        2,
        "server.url",
        "unknown key `url`; it belongs in [upstream] or [database]",
    ),
    (
        '[server]\nalow = ["10.0.0.0/8"]\n',
        2,
        "server.alow",
        "unknown key `alow`; did you mean `network.allow`?",
    ),
    (
        '# comment\n\n[sever]\nlisten = "127.0.0.1:1"\n',
        3,
        "sever",
        "unknown table `sever`; did you mean `server`?",
    ),
    (
        'listen = "0.0.0.0:80"\n',
        1,
        "listen",
        "unknown key `listen`; it belongs in [server] or [admin] or [outbound]",
    ),
    ("[server.tls]\ncert = 1\n", 1, "server.tls", "unknown table `tls`"),
    ("server = 5\n", 1, "server", "expected a table, got an integer"),
    (
        "[[hold]]\nmax_seconds = 1\n",
        1,
        "hold",
        "write [hold], not [[hold]]: there is only one",
    ),
    (
        '[server]\nmax_body_bytes = "1MB"\n',
        2,
        "server.max_body_bytes",
        "expected an integer, got a string",
    ),
    (
        "[server]\nmax_body_bytes = 1.5\n",
        2,
        "server.max_body_bytes",
        "expected an integer, got a float",
    ),
    (
        "[upstream]\ntimeout_seconds = true\n",
        2,
        "upstream.timeout_seconds",
        "expected a number, got a boolean",
    ),
    (
        '[signatures]\nrequire = "yes"\n',
        2,
        "signatures.require",
        "expected a boolean, got a string",
    ),
    (
        '[network]\nallow = "10.0.0.0/8"\n',
        2,
        "network.allow",
        "expected an array of strings, got a string",
    ),
    (
        '[server]\ninbox_paths = [\n  "/inbox",\n  7,\n]\n',
        4,
        "server.inbox_paths[1]",
        "expected a string, got an integer",
    ),
    (
        "[server]\ninbox_paths = []\n",
        2,
        "server.inbox_paths",
        "must not be empty",
    ),
    (
        '[server]\ninbox_paths = ["/inbox", "users/*/inbox"]\n',
        2,
        "server.inbox_paths[1]",
        "must start with `/`; got `users/*/inbox`",
    ),
    (
        '[server]\ninbox_paths = ["/users/@*/inbox"]\n',
        2,
        "server.inbox_paths[0]",
        "`*` must stand for a whole path segment, as in /users/*/inbox; got `/users/@*/inbox`",
    ),
    (
        '[server]\nlisten = "127.0.0.1:0"\n',
        2,
        "server.listen",
        "the port must be a number from 1 to 65535; got `0`",
    ),
    (
        '[server]\nlisten = "127.0.0.1:65536"\n',
        2,
        "server.listen",
        "the port must be a number from 1 to 65535; got `65536`",
    ),
    (
        '[server]\nlisten = "127.0.0.1"\n',
        2,
        "server.listen",
        "must be HOST:PORT, like 127.0.0.1:8080; got `127.0.0.1`",
    ),
    (
        '[server]\nlisten = ":8080"\n',
        2,
        "server.listen",
        "missing host (0.0.0.0 listens on every IPv4 address); got `:8080`",
    ),
    (
        '[server]\nlisten = "::1:8080"\n',
        2,
        "server.listen",
        "write an IPv6 address in brackets, like [::1]:8080; got `::1:8080`",
    ),
    (
        '[server]\nlisten = "[::g]:8080"\n',
        2,
        "server.listen",
        "`::g` is not an IPv6 address",
    ),
    (
        '[upstream]\nurl = "ftp://example.org"\n',
        2,
        "upstream.url",
        "must be an http:// or https:// URL; scheme is `ftp:`",
    ),
    (
        '[upstream]\nurl = "127.0.0.1:3000"\n',
        2,
        "upstream.url",
        "must be an http:// or https:// URL; scheme is none",
    ),
    (
        '[upstream]\nurl = "http:///path"\n',
        2,
        "upstream.url",
        "must name a host, like http://127.0.0.1:3000",
    ),
    (
        '[database]\nurl = "mysql://db/sluice"\n',
        2,
        "database.url",
        "must be a postgresql:// URL, or empty for the embedded database",
    ),
    (
        '[network]\nallow = ["10.0.0.0/8", "10.0.0/33"]\n',
        2,
        "network.allow[1]",
        "`10.0.0/33` is not a network like 10.0.0.0/8 or fd00::/8",
    ),
    (
        '[network]\nallow = ["192.168.1.5/24"]\n',
        2,
        "network.allow[0]",
        "`192.168.1.5/24` has host bits set; did you mean `192.168.1.0/24`?",
    ),
    (
        '[hold]\non_timeout = "drop"\n',
        2,
        "hold.on_timeout",
        "must be one of deliver, review, reject; got `drop`",
    ),
    (
        '[log]\nlevel = "WARNING"\n',
        2,
        "log.level",
        "must be one of debug, info, warning, error; got `WARNING`; did you mean `warning`?",
    ),
    (
        "[upstream]\nconcurrency = 0\n",
        2,
        "upstream.concurrency",
        "must be greater than 0, got 0",
    ),
    (
        "[hold]\nmax_seconds = -1.5\n",
        2,
        "hold.max_seconds",
        "must be greater than 0, got -1.5",
    ),
    (
        "[network]\nread_timeout_seconds = inf\n",
        2,
        "network.read_timeout_seconds",
        "must be a finite number",
    ),
    (
        "[network]\nmax_redirects = -1\n",
        2,
        "network.max_redirects",
        "must be 0 or more, got -1",
    ),
    (
        '[storage]\ndata_dir = ""\n',
        2,
        "storage.data_dir",
        "must not be empty",
    ),
    (
        "[delivery]\nbackoff_initial_seconds = 60\nbackoff_max_seconds = 30\n",
        3,
        "delivery.backoff_max_seconds",
        "must be at least backoff_initial_seconds (60.0)",
    ),
    (
        'server.listen = "nope"\n',
        1,
        "server.listen",
        "must be HOST:PORT, like 127.0.0.1:8080; got `nope`",
    ),
    (
        '[log]\n\n\nhold = { on_timeout = "later" }\n',
        4,
        "log.hold",
        "unknown table `hold`",
    ),
    (
        '# the hold\n\nhold = { max_seconds = 1, on_timeout = "later" }\n',
        3,
        "hold.on_timeout",
        "must be one of deliver, review, reject; got `later`",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), CASES)
def test_problem(tmp_path, text, line, key, message):
    file, problems = check(tmp_path, text)
    assert problems == [ConfigProblem(file, line, key, message)]


def test_toml_syntax_error(tmp_path):
    file, problems = check(tmp_path, '[server]\nlisten = "127.0.0.1:8080"\nmax_body_bytes = \n')
    [problem] = problems
    assert (problem.file, problem.line, problem.key) == (file, 3, "(syntax)")
    assert problem.message == "Invalid value (at line 3, column 18)"


def test_toml_syntax_error_at_end_of_document(tmp_path):
    file, problems = check(tmp_path, '[server]\ninbox_paths = ["/inbox",\n')
    [problem] = problems
    assert (problem.file, problem.line, problem.key) == (file, 3, "(syntax)")
    assert "end of document" in problem.message


def test_duplicate_key_is_a_syntax_error(tmp_path):
    _file, problems = check(tmp_path, "[log]\nlevel = 'info'\nlevel = 'debug'\n")
    [problem] = problems
    assert (problem.line, problem.key) == (3, "(syntax)")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    assert check_config(path, environ={}) == [
        ConfigProblem(str(path), None, "(file)", "cannot read: No such file or directory")
    ]


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[log]\n# caf\xe9\nlevel = "info"\n'.encode("latin-1"))
    assert check_config(path, environ={}) == [
        ConfigProblem(str(path), 2, "(file)", "is not UTF-8 text")
    ]


def test_every_problem_is_reported_in_line_order(tmp_path):
    file, problems = check(
        tmp_path,
        """
        [hold]
        on_timeout = "sometimes"
        max_seconds = 0

        [server]
        listen = "localhost"
        lisen = "localhost:1"

        [upstrem]
        url = "http://x"
        """,
        environ={"SLUICE_DATABASE_URL": "sqlite:///x"},
    )
    assert [(p.file, p.line, p.key) for p in problems] == [
        (file, 2, "hold.on_timeout"),
        (file, 3, "hold.max_seconds"),
        (file, 6, "server.listen"),
        (file, 7, "server.lisen"),
        (file, 9, "upstrem"),
        ("$SLUICE_DATABASE_URL", None, "database.url"),
    ]
    assert problems[3].message == "unknown key `lisen`; did you mean `listen`?"
    assert problems[4].message == "unknown table `upstrem`; did you mean `upstream`?"


def test_load_config_raises_with_every_problem(tmp_path):
    path = write(tmp_path, "[hold]\nmax_seconds = 0\n[log]\nlevel = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert [p.key for p in caught.value.problems] == ["hold.max_seconds", "log.level"]
    assert str(caught.value).splitlines() == [
        f"{path}:2: hold.max_seconds: must be greater than 0, got 0",
        f"{path}:4: log.level: expected a string, got an integer",
    ]


def test_main_check_config(tmp_path, capsys):
    # A complete file names the instance's hosts: without them check-config warns (below).
    good = write(
        tmp_path, '[server]\nhosts = ["social.example"]\n[log]\nlevel = "info"\n', name="good.toml"
    )
    assert main_check_config(str(good)) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"OK: {good}\n", "")

    bad = write(tmp_path, '[log]\nlevel = "loud"\nlevle = 1\n', name="bad.toml")
    assert main_check_config(str(bad)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}:2: log.level: must be one of debug, info, warning, error; got `loud`",
        f"{bad}:3: log.levle: unknown key `levle`; did you mean `level`?",
    ]


def test_check_config_warns_about_unsafe_but_valid_settings(tmp_path, capsys):
    key = tmp_path / "evidence.key"
    key.write_bytes(bytes(range(200, 232)))  # a usable key: serve (and check-config) load it
    key.chmod(0o644)
    token = tmp_path / "token"
    token.write_text("secret")
    token.chmod(0o600)
    path = write(
        tmp_path,
        f'[log]\nlevel = "info"\n[evidence]\nkey_file = "{key}"\n[admin]\ntoken_file = "{token}"\n',
        name="lax.toml",
    )
    assert main_check_config(str(path)) == 0
    out, err = capsys.readouterr()
    assert out == f"OK: {path}\n"
    lines = err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}: server.hosts: warning: empty: activities signed for any")
    assert lines[1] == (
        f"{path}:4: evidence.key_file: warning: {key} is readable or writable by every user "
        f"(mode 0o644); chmod o-rwx {key}"
    )
    # The token file is private: no warning. Named hosts: no warning either.
    assert config_warnings(load_config(None, environ={}))[0].key == "server.hosts"
    hosts = write(tmp_path, '[server]\nhosts = ["social.example", "[2001:db8::1]:8443"]\n')
    assert config_warnings(load_config(hosts, environ={})) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://social.example", "is not a host name like social.example (no scheme, no path)"),
        ("::1", "write an IPv6 address in brackets"),
        ("social.example:0", "the port must be a number from 1 to 65535"),
    ],
)
def test_server_hosts_are_host_names(tmp_path, value, message):
    path = write(tmp_path, f'[server]\nhosts = ["{value}"]\n')
    [problem] = check_config(path, environ={})
    assert problem.key == "server.hosts[0]"
    assert message in problem.message


# --- finding lines -----------------------------------------------------------


def test_locate_keys():
    text = textwrap.dedent(
        '''
        # top
        title = """
        [server]
        listen = "not a key"
        """
        [server]   # the server
        "listen" = "x"
        inbox_paths = [
          "/a", # one
          # between
          "/b",
        ]
        [ 'hold' ]
        a.b . c = { d = 1, e = [1, {f = 2}] }
        s = 'it''s'
        '''
    ).lstrip("\n")
    found = locate_keys(text)
    assert found[("title",)] == 2
    assert found[("server",)] == 6
    assert found[("server", "listen")] == 7
    assert found[("server", "inbox_paths")] == 8
    assert found[("server", "inbox_paths", 0)] == 9
    assert found[("server", "inbox_paths", 1)] == 11
    assert found[("hold",)] == 13
    assert found[("hold", "a", "b", "c", "d")] == 14
    assert found[("hold", "a", "b", "c", "e", 1, "f")] == 14
    assert found[("hold", "s")] == 15
    assert ("listen",) not in found


def test_locate_keys_in_arrays_of_tables():
    text = textwrap.dedent(
        """
        [[bank]]
        name = "a"
        [[bank.entry]]
        x = 1
        [[bank.entry]]
        x = 2
        [[bank]]
        name = "b"
        [bank.extra]
        y = 1
        [[bank.entry]]
        x = 3
        """
    ).lstrip("\n")
    found = locate_keys(text)
    assert found[("bank", 0)] == 1
    assert found[("bank", 0, "name")] == 2
    assert found[("bank", 0, "entry", 1, "x")] == 6
    assert found[("bank", 1)] == 7
    assert found[("bank", 1, "name")] == 8
    assert found[("bank", 1, "extra", "y")] == 10
    assert found[("bank", 1, "entry", 0, "x")] == 12


# --- arrays of tables, with a schema of our own ------------------------------


@dataclass(frozen=True)
class _Bank:
    name: str
    category: str
    pdq_max_distance: int


@dataclass(frozen=True)
class _Log:
    level: str


_SCHEMA = (
    Section(
        "bank",
        _Bank,
        (
            Field("name", STRING),
            Field("category", STRING, check=one_of("csam", "unwanted")),
            Field("pdq_max_distance", INTEGER, 31, check=config_module.not_negative),
        ),
        array=True,
    ),
    Section("log", _Log, (Field("level", STRING, "info"),)),
)


def parse_private(text: str):
    text = textwrap.dedent(text).lstrip("\n")
    return parse(text, "t.toml", base=Path("/"), environ={}, schema=_SCHEMA)


def test_array_of_tables():
    built, problems = parse_private(
        """
        [[bank]]
        name = "ncmec"
        category = "csam"

        [[bank]]
        name = "local"
        category = "unwanted"
        pdq_max_distance = 10
        """
    )
    assert problems == []
    assert built["bank"] == (_Bank("ncmec", "csam", 31), _Bank("local", "unwanted", 10))
    assert built["log"] == _Log("info")


def test_array_of_tables_absent_is_empty():
    assert parse_private("") == ({"bank": (), "log": _Log("info")}, [])


def test_array_of_tables_problems():
    built, problems = parse_private(
        """
        [[bank]]
        name = "ncmec"
        category = "csam"

        [[bank]]
        category = "csma"
        pdq_max_distance = -1
        nmae = "x"
        """
    )
    assert "bank" not in built
    assert problems == [
        ConfigProblem("t.toml", 5, "bank[1].name", "missing required key `name`"),
        ConfigProblem(
            "t.toml",
            6,
            "bank[1].category",
            "must be one of csam, unwanted; got `csma`; did you mean `csam`?",
        ),
        ConfigProblem("t.toml", 7, "bank[1].pdq_max_distance", "must be 0 or more, got -1"),
        ConfigProblem("t.toml", 8, "bank[1].nmae", "unknown key `nmae`; did you mean `name`?"),
    ]


def test_array_of_tables_written_as_a_table():
    _, problems = parse_private('# banks\n[bank]\nname = "x"\ncategory = "csam"\n')
    assert problems == [
        ConfigProblem("t.toml", 2, "bank", "write [[bank]], not [bank]: there may be several")
    ]


def test_inline_array_of_tables():
    _built, problems = parse_private(
        """
        bank = [
          { name = "a", category = "csam" },
          { name = "b", category = "nope" },
        ]
        """
    )
    assert problems == [
        ConfigProblem("t.toml", 3, "bank[1].category", "must be one of csam, unwanted; got `nope`")
    ]


def test_required_key_of_a_missing_table_has_no_line():
    schema = (Section("log", _Log, (Field("level", STRING, REQUIRED),)),)
    assert parse("", "t.toml", base=Path("/"), environ={}, schema=schema) == (
        {},
        [ConfigProblem("t.toml", None, "log.level", "missing required key `level`")],
    )


def test_unknown_and_quoted_keys_are_quoted_in_names(tmp_path):
    file, problems = check(tmp_path, '[log]\n"log level" = "info"\n')
    assert problems == [
        ConfigProblem(file, 2, 'log."log level"', "unknown key `log level`; did you mean `level`?")
    ]


def test_paths_accept_os_pathlike(tmp_path):
    path = write(tmp_path, "")
    assert load_config(os.fspath(path), environ={}) == load_config(path, environ={})


def test_rules_must_name_configured_banks(tmp_path):
    _, problems = check(
        tmp_path,
        """
        [[bank]]
        name = "local"
        category = "unwanted"

        [[bank]]
        name = "local"
        category = "csam"

        [[rule]]
        match = "locale"
        action = "reject"

        [[rule]]
        match = "category:nope"
        action = "review"

        [[rule]]
        match = "category:csam"
        action = "quarantine"

        [[rule]]
        match = "signal:unchecked"
        action = "review"
        """,
    )
    assert [(p.line, p.key) for p in problems] == [
        (6, "bank[1].name"),
        (10, "rule[0].match"),
        (14, "rule[1].match"),
        (19, "rule[2].action"),
    ]
    assert "did you mean `local`?" in problems[1].message
    assert "set [evidence] key_file" in problems[3].message


def test_banks_and_rules_load(tmp_path):
    key = tmp_path / "evidence.key"
    key.write_bytes(bytes(32))
    path = write(
        tmp_path,
        f"""
        [evidence]
        key_file = "{key}"

        [[bank]]
        name = "ncmec-md5"
        category = "csam"
        pdq_max_distance = 20
        dihedral = true

        [[rule]]
        match = "category:csam"
        action = "quarantine"
        """,
    )
    config = load_config(path, environ={})
    [bank] = config.bank
    assert (bank.name, bank.category, bank.pdq_max_distance, bank.dihedral) == (
        "ncmec-md5",
        "csam",
        20,
        True,
    )
    assert config.rule[0].action == "quarantine"
    assert config.evidence.key_file == key


def test_check_config_refuses_a_data_dir_too_long_for_the_embedded_socket(tmp_path, capsys):
    """serve would refuse it (relay.store.db), so check-config says so first."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = write(
        tmp_path, f'[server]\nhosts = ["social.example"]\n[storage]\ndata_dir = "{deep}"\n'
    )
    assert main_check_config(str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: storage.data_dir: the embedded PostgreSQL's socket would be")


# --- Sluice's actor, receipts and trust ---------------------------------------


def test_actor_receipts_and_trust_are_read(tmp_path):
    path = write(
        tmp_path,
        """
        [actor]
        base_url = "https://sluice.example.org"
        [receipts]
        jurisdictions = ["DE", "EU"]
        accept_follows = "listed"
        follow_domains = ["peer.example"]
        [[trust]]
        peer = "peer.example"
        categories = ["STATEMENT_CATEGORY_PROTECTION_OF_MINORS"]
        """,
    )
    config = load_config(path, environ={})
    assert config.actor.base_url == "https://sluice.example.org"
    assert config.actor.name == "sluice"
    assert config.receipts.jurisdictions == ("DE", "EU")
    [trust] = config.trust
    assert trust.peer == "peer.example"
    assert trust.categories == ("STATEMENT_CATEGORY_PROTECTION_OF_MINORS",)
    assert (trust.jurisdictions, trust.automated, trust.hashes) == (("*",), False, True)


def test_actor_and_receipt_problems(tmp_path):
    _file, problems = check(
        tmp_path,
        """
        [actor]
        name = "no spaces"
        [[trust]]
        peer = "https://peer.example/"
        """,
    )
    assert [p.key for p in problems] == ["actor.name", "trust[0].peer"]
    assert "a WebFinger user part" in problems[0].message
    # Across tables (checked once every key is well formed):
    _file, problems = check(
        tmp_path,
        """
        [actor]
        base_url = "https://sluice.example.org"
        [receipts]
        accept_follows = "listed"
        """,
    )
    assert [p.key for p in problems] == ["receipts.jurisdictions", "receipts.follow_domains"]


def test_a_jurisdiction_is_a_country_code_or_eu(tmp_path):
    _file, problems = check(tmp_path, '[receipts]\njurisdictions = ["de", "EU", "Germany"]\n')
    assert [p.key for p in problems] == ["receipts.jurisdictions[0]", "receipts.jurisdictions[2]"]


def test_following_needs_the_actor(tmp_path):
    _file, problems = check(tmp_path, '[receipts]\nfollow = ["https://peer.example/actor"]\n')
    [problem] = problems
    assert problem.key == "receipts.follow"
    assert "[actor] base_url" in problem.message


def test_a_receipt_effect_needs_the_actor(tmp_path):
    _file, problems = check(
        tmp_path,
        '[[bank]]\nname = "b"\ncategory = "test"\n'
        '[[rule]]\nmatch = "b"\naction = "reject"\neffects = ["receipt"]\n',
    )
    [problem] = problems
    assert problem.key == "rule[0].effects"
    assert "set [actor] base_url" in problem.message


def test_trusted_receipts_bring_their_categories(tmp_path):
    """A rule may act on the categories honoured receipts fill, with no [[bank]] of them."""
    text = '[[rule]]\nmatch = "category:csam"\naction = "reject"\n'
    _file, problems = check(tmp_path, text)
    assert [p.key for p in problems] == ["rule[0].match"]
    _file, problems = check(tmp_path, text + '[[trust]]\npeer = "peer.example"\n')
    assert problems == []
