"""URDNA2015 canonicalisation in worker processes, each document under a time budget.

pyld is pure Python, and some inputs take exponential time: a few hundred bytes of
symmetric blank nodes keep URDNA2015 busy for minutes. So canonicalisation shares no
thread pool with anything else, and it runs where it can be stopped: a thread cannot be
interrupted, a process can. Each worker is a fresh interpreter
(``python -c "...serve()"``) that reads JSON lines on stdin and answers on stdout. A
document that runs past the budget gets its worker killed, which gives the CPU back at
once, and a fresh worker is started in its place.

Why not a ProcessPoolExecutor: it cannot kill one running task, only break the whole
pool. Why not fork: Sluice's process has threads, and a forked child inherits their
locks. A fresh interpreter costs about 0.3 s to import pyld, paid once per worker and
again only after a kill. Each worker also caps its own CPU time (RLIMIT_CPU), so one
whose parent died cannot spin on, and its memory (RLIMIT_AS), so one document cannot
take the host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog

from relay.errors import RateLimited, SignatureError

__all__ = ["Canonicaliser", "serve"]

log = structlog.get_logger(__name__)

# The worker imports from our sys.path, so it runs the very code we run.
_WORKER = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
    "from relay.signature.canonical import serve; serve()"
)
_START_SECONDS = 30.0  # importing pyld on a busy host; not the sender's budget
_READY = b'{"ready":true}'
_WORKER_MEMORY = 1 << 30  # address space; a worker uses about 70 MB


class _Overtime(Exception):
    """The worker ran past the budget and was killed."""


class _WorkerFailed(Exception):
    """The worker could not start, died, or answered nonsense."""


class _Worker:
    """One child process and the bytes it has written that are not yet a whole line."""

    def __init__(self, budget_seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER, repr(budget_seconds), json.dumps(sys.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._pending = b""
        self._ready = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def ask(self, line: bytes, budget_seconds: float) -> dict[str, Any]:
        """Send one request line; the budget runs from when a ready worker has it."""
        assert self.process.stdin is not None
        try:
            if not self._ready:
                if self._read_line(time.monotonic() + _START_SECONDS) != _READY:
                    raise _WorkerFailed("worker did not say it was ready")
                self._ready = True
            self.process.stdin.write(line)
            self.process.stdin.flush()
        except (OSError, EOFError, TimeoutError) as exc:
            raise _WorkerFailed(str(exc) or type(exc).__name__) from exc
        try:
            answer = self._read_line(time.monotonic() + budget_seconds)
        except TimeoutError:
            raise _Overtime from None
        except (OSError, EOFError) as exc:
            raise _WorkerFailed(str(exc) or type(exc).__name__) from exc
        try:
            reply = json.loads(answer)
        except ValueError as exc:
            raise _WorkerFailed("worker answered something that is not JSON") from exc
        if not isinstance(reply, dict):
            raise _WorkerFailed("worker answered something that is not an object")
        return reply

    def _read_line(self, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        readable = select.poll()  # not select(): our descriptors may pass FD_SETSIZE
        readable.register(fd, select.POLLIN)
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not readable.poll(math.ceil(left * 1000)):
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("worker exited")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def kill(self) -> None:
        """Kill and reap: once this returns the process no longer exists."""
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Canonicaliser:
    """SHA-256 of documents' URDNA2015 N-Quads, computed by `workers` child processes.

    At most `workers` documents are canonicalised at once and `max_waiting` more wait
    for a worker; past that, RateLimited. A document that takes longer than
    `budget_seconds` is abandoned (SignatureError) and its worker killed. `runs` counts
    requests handed to a worker, `timeouts` those abandoned; they suit metrics.
    """

    def __init__(
        self, *, workers: int = 1, budget_seconds: float = 2.0, max_waiting: int = 16
    ) -> None:
        if workers < 1 or budget_seconds <= 0 or max_waiting < 0:
            raise ValueError("workers >= 1, budget_seconds > 0 and max_waiting >= 0 please")
        self.workers = workers
        self.budget_seconds = budget_seconds
        self.max_waiting = max_waiting
        self.runs = 0
        self.timeouts = 0
        self._lock = threading.Lock()
        self._spare: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._queued = 0
        self._closed = False
        # One thread per worker process: it only waits on the worker's pipe.
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="sluice-canonical")

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now."""
        with self._lock:
            return [w.process.pid for w in self._live]

    async def hashes(self, documents: Sequence[Mapping[str, Any]]) -> list[str]:
        """Hex SHA-256 of each document's canonical N-Quads.

        Raises SignatureError when a document uses an unknown context, is not valid
        JSON-LD or runs past the budget; RateLimited when too many are waiting.
        """
        try:
            line = json.dumps(list(documents), separators=(",", ":")).encode("ascii") + b"\n"
        except (TypeError, ValueError):
            raise SignatureError("object is not valid JSON-LD") from None
        with self._lock:
            if self._closed:
                raise SignatureError("linked-data signatures cannot be checked now")
            if self._queued >= self.workers + self.max_waiting:
                raise RateLimited(
                    "too many linked-data signatures to check right now",
                    retry_after=max(1, math.ceil(self.budget_seconds)),
                )
            self._queued += 1
            self.runs += 1
            job: Future[dict[str, Any]] = self._threads.submit(self._run, line)
        job.add_done_callback(self._done)
        try:
            reply = await asyncio.wrap_future(job)
        except _Overtime:
            raise SignatureError(
                f"JSON-LD canonicalisation of the object took longer than {self.budget_seconds:g} s"
            ) from None
        except _WorkerFailed as exc:
            if self._closed:
                raise SignatureError("linked-data signatures cannot be checked now") from None
            log.warning("canonicaliser_failed", reason=str(exc))
            raise SignatureError("the object could not be canonicalised") from None
        return _read_reply(reply, len(documents))

    def close(self) -> None:
        """Kill every worker, busy or not; waiting requests fail with SignatureError."""
        with self._lock:
            self._closed = True
            workers = list(self._live)
            self._live.clear()
            self._spare.clear()
        for worker in workers:
            worker.kill()
        self._threads.shutdown(wait=False)  # queued jobs find it closed and fail at once

    def _done(self, _: Future[dict[str, Any]]) -> None:
        with self._lock:
            self._queued -= 1

    def _run(self, line: bytes) -> dict[str, Any]:
        """In a pool thread: hand `line` to a worker and wait for its answer."""
        worker = self._checkout()
        try:
            reply = worker.ask(line, self.budget_seconds)
        except _Overtime:
            with self._lock:
                self.timeouts += 1
            self._replace(worker)
            raise
        except _WorkerFailed:
            self._replace(worker)
            raise
        with self._lock:
            if not self._closed:
                self._spare.append(worker)
                return reply
        worker.kill()
        return reply

    def _checkout(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise _WorkerFailed("canonicaliser closed")
            while self._spare:
                worker = self._spare.pop()
                if worker.alive:
                    return worker
                self._live.discard(worker)
                worker.kill()  # reaps it and closes its pipes
            started = self._start()
            if started is None:
                raise _WorkerFailed("could not start a worker")
            return started

    def _replace(self, worker: _Worker) -> None:
        """Kill `worker` and start its successor now, so the next request finds it ready."""
        worker.kill()
        with self._lock:
            self._live.discard(worker)
            if self._closed:
                return
            successor = self._start()
            if successor is not None:
                self._spare.append(successor)

    def _start(self) -> _Worker | None:
        """A new worker, counted as live; None (logged) when the system refuses one."""
        try:
            worker = _Worker(self.budget_seconds)
        except OSError as exc:
            log.warning("canonicaliser_failed", reason=f"cannot start a worker: {exc}")
            return None
        self._live.add(worker)
        return worker


def _read_reply(reply: Mapping[str, Any], count: int) -> list[str]:
    if "unknown_context" in reply:
        raise SignatureError(f"object uses an unknown JSON-LD context {reply['unknown_context']}")
    if "invalid" in reply:
        raise SignatureError("object is not valid JSON-LD")
    hashes = reply.get("hashes")
    if (
        not isinstance(hashes, list)
        or len(hashes) != count
        or not all(isinstance(h, str) and len(h) == 64 for h in hashes)
    ):
        log.warning("canonicaliser_failed", reason="malformed reply")
        raise SignatureError("the object could not be canonicalised")
    return hashes


# --- the worker side ---------------------------------------------------------------------------


def serve() -> None:
    """Worker main: each stdin line a JSON list of documents, each answer one line."""
    from relay.jsonld import UnknownContext, normalize

    budget = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; we follow it
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > _WORKER_MEMORY:
        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY, hard))
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print cannot corrupt the replies
    normalize({"@context": "https://www.w3.org/ns/activitystreams", "type": "Note"})  # warm up
    replies.write(_READY + b"\n")
    replies.flush()

    def answer(line: bytes) -> dict[str, Any]:
        try:
            documents = json.loads(line)
            quads = [normalize(document) for document in documents]
            return {"hashes": [hashlib.sha256(q.encode("utf-8")).hexdigest() for q in quads]}
        except UnknownContext as exc:
            return {"unknown_context": exc.url}
        except Exception:  # pyld raises many kinds on odd input; all mean "not JSON-LD"
            return {"invalid": True}

    for line in sys.stdin.buffer:
        _cap_cpu(budget)
        replies.write(json.dumps(answer(line)).encode("ascii") + b"\n")
        replies.flush()


def _cap_cpu(budget: float) -> None:
    """Let this request use the budget and a margin; past it the kernel ends us."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + budget) + 2
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
