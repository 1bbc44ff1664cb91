"""What bounds the server's work: two lanes, a share of the queue per client, memory handed back
after a burst, and no uploads.

    HEAVY lane  every request that runs a model, draws a dashboard or writes a file: HEAVY_CONCURRENCY
                of them at once across ALL such endpoints (one Gradio concurrency_id: Gradio's limit
                is per function otherwise, and 11 heavy functions x 2 let ~22 run together)
    LIGHT lane  the sequence edits (generate, preset, set memory, move trigger) and the permalink:
                pure numpy, milliseconds; their own LIGHT_CONCURRENCY, so they never wait behind
                the heavy lane's queue
    queue       MAX_QUEUE requests wait in all (beyond that: "Queue is full"), at most CLIENT_SHARE
                per client (waiting + running): one client cannot lock the others out. A client is
                a Gradio session (a browser tab, one gradio_client.Client); a call without one
                (POST /gradio_api/call/<api>) counts for its IP address. Refused: HTTP 429 with
                CLIENT_SHARE_MESSAGE.
    memory      TRIM_AFTER_IDLE_S after the last heavy request ends, glibc is asked to hand freed
                memory back (malloc_trim): kernels.cpu_memory.keep_freed_memory keeps up to 256 MiB
                of freed heap per arena for speed, so without this the RSS stayed at its peak. And
                glibc keeps at most MALLOC_ARENAS arenas: Gradio runs each request on whichever
                worker thread is free, each thread got its own arena, and what the arenas kept
                apart could not be trimmed (measured in-process, 16 mixed heavy requests on 8
                threads: RSS after the trim +60..80% over idle with glibc's default arenas,
                +3..4% with 2)
    uploads     the app has no file input: POST /gradio_api/upload (and any multipart body) gets 403
    threads     with share_cores(n) (ui/common.configure_cpu on a CPU server), each heavy request sets
                its own torch threads to n // (heavy requests running, itself included) when it
                starts: a lone request gets every core (mamba-130m's 512-token trace: 1.9 s on 2
                threads vs 3.1 s on 1, a quiet 2-core machine), two at once one each. torch keeps the
                setting per worker thread (OpenMP's thread count is per calling thread)

Wiring: app.py passes each event's lane to `event_kwargs`, wraps heavy adapters in `heavy`, calls
`limit_per_client(demo)` after demo.queue(), and launches with `app_kwargs()`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
import threading
from functools import wraps
from pathlib import Path

from fastapi import HTTPException
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

HEAVY, LIGHT = "heavy", "light"          # Gradio concurrency_ids
HEAVY_CONCURRENCY = 2                    # model runs at once (2 CPU cores on the free Space tier)
LIGHT_CONCURRENCY = 4                    # edits at once (each a few ms of numpy)
MAX_QUEUE = 64                           # requests waiting in all lanes; more are refused, not piled up
CLIENT_SHARE = 4                         # requests of one client waiting or running, at most
TRIM_AFTER_IDLE_S = 2.0                  # heavy lane idle this long -> malloc_trim
MALLOC_ARENAS = HEAVY_CONCURRENCY        # glibc malloc arenas (its default: 8 per core)
M_ARENA_MAX = -8                         # glibc's mallopt() parameter number
CLIENT_SHARE_MESSAGE = (f"this client already has {CLIENT_SHARE} requests waiting or running (the most one client "
                        "may have, so that others get their turn): wait for one to finish")
UPLOAD_MESSAGE = "this app takes no file uploads"


def event_kwargs(lane: str) -> dict:
    """The Gradio event arguments that put an event in `lane`."""
    limit = {HEAVY: HEAVY_CONCURRENCY, LIGHT: LIGHT_CONCURRENCY}[lane]
    return {"concurrency_id": lane, "concurrency_limit": limit}


# ---------------------------------------------------------------- memory back after a burst
def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


_LIBC = _libc()
_LOCK = threading.Lock()
_running = 0                              # heavy requests in progress
_cores = 0                                # > 0: heavy requests share this many cores (share_cores)
_generation = 0                           # bumped by every heavy request's end: a stale timer does nothing
trims = 0                                 # malloc_trim calls so far (tests read it)


def limit_arenas(n: int = MALLOC_ARENAS) -> bool:
    """At most n malloc arenas in this process (call once at start, before worker threads allocate).
    True if glibc took it."""
    return _LIBC is not None and bool(_LIBC.mallopt(M_ARENA_MAX, n))


def release_memory() -> bool:
    """Hand freed heap back to the OS (glibc malloc_trim(0): every arena, free pages in the middle
    too). True if the C library did it."""
    global trims
    if _LIBC is None:
        return False
    trims += 1
    return bool(_LIBC.malloc_trim(0))


def _trim_if_still_idle(generation: int) -> None:
    with _LOCK:
        idle = _running == 0 and generation == _generation
    if idle:
        release_memory()


def available_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, and less under a cgroup v2 CPU quota ("200000
    100000" = 2 cores), which containers such as a Space's get while os.cpu_count() reports the host's."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def share_cores(cores: int) -> None:
    """From now on each heavy request starts with torch threads = cores // heavy requests running
    (0: leave the threads alone)."""
    global _cores
    _cores = max(0, int(cores))


def threads_for(running: int) -> int:
    """torch threads for a heavy request that starts with `running` of them in progress, itself included."""
    return max(1, _cores // max(1, running))


def heavy(fn):
    """A heavy adapter, counted: when the last running one ends and none starts within
    TRIM_AFTER_IDLE_S, release_memory() runs (on a timer thread, not in anyone's request). With
    share_cores, it first takes its share of the cores."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        global _running, _generation
        with _LOCK:
            _running += 1
            running = _running
        if _cores:
            import torch            # here: the rest of this module is plain Python, and its tests too
            torch.set_num_threads(threads_for(running))
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                _running -= 1
                _generation += 1
                start, gen = _running == 0, _generation
            if start:
                timer = threading.Timer(TRIM_AFTER_IDLE_S, _trim_if_still_idle, (gen,))
                timer.daemon = True
                timer.start()
    return wrapper


# ---------------------------------------------------------------- a share of the queue per client
def client_of(session_hash, event_id, request) -> str:
    """A request's client: its Gradio session, or its IP address when it came without one (Gradio
    then uses the event's own id as the session)."""
    if session_hash and session_hash != event_id:
        return f"session {session_hash}"
    client = getattr(request, "client", None)
    return f"address {client.host if client is not None else '?'}"


def pending(queue, client: str) -> int:
    """Requests of `client` waiting in any lane or running (gradio.queueing.Queue internals:
    event_queue_per_concurrency_id[*].queue, active_jobs)."""
    waiting = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
    running = [e for job in queue.active_jobs if job for e in job]
    return sum(client_of(e.session_hash, e._id, e.request) == client for e in waiting + running)


def limit_per_client(demo, share: int = CLIENT_SHARE) -> None:
    """Refuse (HTTP 429, CLIENT_SHARE_MESSAGE) a request whose client already has `share` waiting
    or running. Wraps the queue's push, where Gradio itself refuses a full queue."""
    queue = demo._queue
    push = queue.push

    async def push_within_share(body, request, username):
        client = client_of(getattr(body, "session_hash", None), None, request)
        if pending(queue, client) >= share:
            raise HTTPException(status_code=429, detail=CLIENT_SHARE_MESSAGE)
        return await push(body, request, username)

    queue.push = push_within_share


# ---------------------------------------------------------------- no uploads
class RefuseUploads:
    """ASGI middleware: 403 for the upload route and for any multipart body (the app has no file
    input; Gradio would store what it is sent and serve it back by URL)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            ctype = dict(scope.get("headers") or []).get(b"content-type", b"")
            if path.rstrip("/").endswith("/upload") or ctype.startswith(b"multipart/"):
                await PlainTextResponse(UPLOAD_MESSAGE, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def app_kwargs() -> dict:
    """demo.launch(app_kwargs=...): the FastAPI app's middleware."""
    return {"middleware": [Middleware(RefuseUploads)]}
