"""Run a private nginx (the Debian binary) on loopback for tests; no fixtures inside."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def find_nginx() -> str:
    """Path of the nginx binary; skip (or fail under SLUICE_REQUIRE_ALL=1) if there is none."""
    candidates = [os.environ.get("SLUICE_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = "nginx is not installed (apt-get install nginx, or set SLUICE_NGINX=/path/to/nginx)"
    if os.environ.get("SLUICE_REQUIRE_ALL") == "1":
        pytest.fail(f"SLUICE_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_main_conf(workdir: Path, site_conf: str) -> Path:
    """nginx.conf for a private nginx: every path it writes is under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "site.conf").write_text(site_conf)
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    # As root, nginx would run its workers as www-data, which cannot enter pytest's private tmp
    # dirs (mode 0700); `user root;` keeps them root. As non-root the directive is not written:
    # the workers simply run as the current user.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"{user}"
        "worker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {workdir}/access.log;\n"
        f"    client_body_temp_path {temp['body']};\n"
        f"    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fastcgi']};\n"
        f"    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        f"    include {workdir}/site.conf;\n"
        "}\n"
    )
    return conf


def _nginx_cmd(workdir: Path, conf: Path, *extra: str) -> list[str]:
    # -p: prefix for relative paths; -e: the error log used before the config is read (1.19.5+).
    nginx = find_nginx()
    return [nginx, "-p", f"{workdir}/", "-c", str(conf), "-e", f"{workdir}/error.log", *extra]


def nginx_test_config(workdir: Path, site_conf: str) -> subprocess.CompletedProcess[str]:
    """Run ``nginx -t`` on ``site_conf`` (http-context text); returns the finished process."""
    conf = _write_main_conf(workdir, site_conf)
    return subprocess.run(
        _nginx_cmd(workdir, conf, "-t"), capture_output=True, text=True, timeout=30, check=False
    )


@contextlib.contextmanager
def run_nginx(workdir: Path, site_conf: str, attempts: int = 3) -> Iterator[int]:
    """Run a private, foreground nginx serving ``site_conf``; yield the port it listens on.

    ``site_conf`` is http-context text (upstreams, server blocks); its server block must say
    ``listen @LISTEN@;``, which is replaced with a free loopback address. Logs, pid and temp
    files stay under ``workdir``. nginx is stopped (and waited for) on exit.
    """
    if "@LISTEN@" not in site_conf:
        raise ValueError("site_conf needs a `listen @LISTEN@;` line")
    error_log = workdir / "error.log"
    for attempt in range(attempts):
        port = _free_port()
        conf = _write_main_conf(workdir, site_conf.replace("@LISTEN@", f"127.0.0.1:{port}"))
        proc = subprocess.Popen(
            _nginx_cmd(workdir, conf, "-g", "daemon off;"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.02)
            else:
                log = error_log.read_text() if error_log.exists() else ""
                lost_race = proc.poll() is not None and "Address already in use" in log
                if lost_race and attempt + 1 < attempts:
                    continue  # another process took the port meanwhile: try another one
                pytest.fail(f"nginx did not start (exit status {proc.poll()}):\n{log}")
            yield port
            return
        finally:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: fast shutdown
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
