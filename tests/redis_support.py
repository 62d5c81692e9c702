"""Real-server test tools for the Redis-backed policies: a redis-server, and a fault proxy.

`RedisServer` runs a throwaway ``redis-server`` (persistence off, 127.0.0.1, a free port, a
temporary directory) that a test can kill, restart on the same port, or stop. `TcpProxy`
sits between a client and that server and breaks the network on command: latency
(`TcpProxy.delay`), a partition (`TcpProxy.blackhole`), dropped connections
(`TcpProxy.reset_all`). `require_redis_server` turns a missing binary into a skip on a
developer's machine and into a failure in CI (``CI=true``).

The fixtures built on them (``redis_server``, ``redis_url``, ``redis_proxy``) are in
``tests/conftest.py``. Clients made by `redis_client` (and `RedisServer.client`) do not
retry: redis-py's default `redis.Redis` retries a ConnectionError or TimeoutError 10 times
with backoff, which would hide, or multiply, the very fault a test injects.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "HOST",
    "INSTALL_HINT",
    "RedisServer",
    "RedisServerError",
    "TcpProxy",
    "find_redis_server",
    "free_port",
    "no_retry",
    "redis_client",
    "require_redis_server",
]

#: Every server and proxy here listens on the loopback interface only.
HOST: Final = "127.0.0.1"
#: How to get the binary on Debian and Ubuntu (what .ci/run does when it is missing).
INSTALL_HINT: Final = "apt-get install -y redis-server"


# -- finding the binary -----------------------------------------------------------------


def find_redis_server() -> str | None:
    """The path of the ``redis-server`` executable on PATH, or None."""
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """The path of ``redis-server``; without one, skip the test, or fail it when CI=true.

    A developer without the binary still runs the rest of the suite; CI, which installs it
    (``.ci/run``), must never turn the Redis tests into silent skips.
    """
    path = find_redis_server()
    if path is not None:
        return path
    message = (
        "redis-server not found on PATH: the tests marked 'redis' need a real server; "
        f"install it with `{INSTALL_HINT}` (Debian/Ubuntu, as root)"
    )
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message}. CI=true: a missing redis-server is a failure there", pytrace=False)
    pytest.skip(message)


# -- clients --------------------------------------------------------------------------


def no_retry() -> Retry:
    """A redis-py retry policy that never retries: each fault is seen exactly once."""
    return Retry(NoBackoff(), 0)


def redis_client(url: str, *, timeout: float = 1.0, **options: Any) -> redis.Redis:
    """A client for test assertions: short socket timeouts and no retries.

    ``timeout`` bounds both connecting and every read; ``options`` go to
    `redis.Redis.from_url` and win over these defaults (``single_connection_client=True``
    keeps one connection, so that a dropped connection shows as a ConnectionError instead
    of being replaced by the pool's health check).
    """
    settings: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": no_retry(),
    }
    settings.update(options)
    return redis.Redis.from_url(url, **settings)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


# -- the server -----------------------------------------------------------------------


class RedisServerError(RuntimeError):
    """redis-server did not start, or did not stop, within its bound; the message has its log."""


class RedisServer:
    """A ``redis-server`` subprocess on 127.0.0.1 for the tests, persistence off.

    `start` picks a free port the first time and keeps it: `restart` and any later `start`
    come back on the same port (redis-server sets SO_REUSEADDR, so the port is reusable right
    after a `kill`), and clients or a `TcpProxy` pointed at the server find it again. Its
    files (the log; no data is ever saved) live in a temporary directory that `stop` removes.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        startup_timeout: float = 5.0,
        stop_timeout: float = 5.0,
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise FileNotFoundError(f"redis-server not found on PATH (install: {INSTALL_HINT})")
        self._executable = found
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._dir: Path | None = None

    # - what it is

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started: it has no port yet")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may have been killed by a test, or crashed)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the current (or last) server process."""
        return None if self._process is None else self._process.pid

    def output(self) -> str:
        """Everything the server processes since the last `stop` wrote (stdout and stderr)."""
        if self._dir is None:
            return ""
        log = self._dir / "redis.log"
        return log.read_text(errors="replace") if log.exists() else ""

    # - life cycle

    def start(self) -> None:
        """Start the server and return once it answers; on its port if it had one before.

        The first start picks a free port; if another process takes that port in between,
        it tries again with a new one (three times). Raises `RedisServerError`, with the
        server's output, if the server exits or does not answer within ``startup_timeout``.
        """
        if self.running:
            raise RuntimeError(f"redis-server is already running (pid {self.pid})")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="resilience-redis-"))
        if self._port is not None:
            self._launch(self._port)
            return
        last: RedisServerError | None = None
        for _ in range(3):
            port = free_port()
            try:
                self._launch(port)
            except RedisServerError as error:
                last = error
                if "Address already in use" not in str(error):
                    raise
            else:
                self._port = port
                return
        assert last is not None
        raise last

    def ensure_running(self) -> None:
        """Start the server again (same port) unless it is running."""
        if not self.running:
            self.start()

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing saved, clients see their connections drop).

        Returns once the process is gone. Does nothing if it is not running.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        try:
            process.wait(timeout=self._stop_timeout)
        except subprocess.TimeoutExpired:
            raise RedisServerError(
                f"redis-server (pid {process.pid}) survived SIGKILL for {self._stop_timeout} s"
            ) from None

    def restart(self) -> None:
        """Kill the server if it runs, then start it again on the same port (empty)."""
        if self._port is None:
            raise RuntimeError("restart() needs a server that was started before")
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout``); remove its files."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # - using it

    def client(self, *, timeout: float = 1.0, **options: Any) -> redis.Redis:
        """A client straight to the server, for assertions (see `redis_client`)."""
        return redis_client(self.url, timeout=timeout, **options)

    def flushall(self) -> None:
        """Empty every database."""
        with self.client() as client:
            client.flushall()

    # - internals

    def _launch(self, port: int) -> None:
        assert self._dir is not None
        arguments = [
            self._executable,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        log_path = self._dir / "redis.log"
        with log_path.open("ab") as log:
            offset = log.tell()
            process = subprocess.Popen(
                arguments,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
            )
        self._process = process
        problem = self._wait_ready(process, port)
        if problem is None:
            return
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self._stop_timeout)
        with log_path.open("rb") as log:
            log.seek(offset)
            output = log.read().decode(errors="replace")[-4000:]
        raise RedisServerError(
            f"redis-server on {HOST}:{port} {problem}.\n"
            f"command: {' '.join(repr(a) if a == '' else a for a in arguments)}\n"
            f"output:\n{output}"
        )

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> str | None:
        """None once this process answers on the port; else what went wrong."""
        deadline = time.monotonic() + self._startup_timeout
        with redis_client(f"redis://{HOST}:{port}/0", timeout=0.5) as probe:
            for _ in range(10_000):  # the deadline ends it first
                try:
                    # The process id tells this server from another that may hold the port.
                    if probe.info("server").get("process_id") == process.pid:
                        return None
                except redis.RedisError:
                    pass
                try:
                    # The wait between two probes, which also notices an early exit.
                    code = process.wait(timeout=0.01)
                except subprocess.TimeoutExpired:
                    pass
                else:
                    return f"exited with code {code} before answering"
                if time.monotonic() > deadline:
                    break
        return f"did not answer within {self._startup_timeout} s"


# -- the fault proxy ----------------------------------------------------------------------

_READ_SIZE: Final = 65536
#: Bytes held for one direction of one connection before the proxy stops reading its source.
_HELD_LIMIT: Final = 1 << 20
#: The longest the proxy thread blocks in select() with nothing scheduled.
_IDLE_WAIT: Final = 0.5
_ACCEPTS_PER_WAKEUP: Final = 64
#: SO_LINGER on, timeout 0: close() sends a RST instead of a FIN.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


class _Flow:
    """One direction of a proxied connection: what is read from src, written to dst."""

    __slots__ = ("done", "dst", "ended", "held", "queue", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        #: (due time, bytes): b"" stands for the source's end of stream.
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0  # bytes in queue
        self.ended = False  # src has sent its end of stream
        self.done = False  # ... and it has been passed on to dst (shutdown SHUT_WR)


class _Link:
    """A client connection and its connection to the target."""

    __slots__ = ("client", "closed", "connect_deadline", "connecting", "down", "up", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket, deadline: float) -> None:
        self.client = client
        self.upstream = upstream
        self.connecting = True
        self.connect_deadline = deadline
        self.up = _Flow(client, upstream)
        self.down = _Flow(upstream, client)
        self.closed = False


class _Request:
    __slots__ = ("done", "kind", "result", "seconds")

    def __init__(self, kind: str, seconds: float = 0.0) -> None:
        self.kind = kind
        self.seconds = seconds
        self.result = 0
        self.done = False


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in a background thread, with faults switched on at will.

    ``TcpProxy(target_host, target_port)`` listens on a free port at once and forwards each
    connection to the target. The controls are thread-safe and synchronous: when one
    returns, the proxy thread has applied it, to the open connections as to the next ones.

    * `delay` holds every chunk, in both directions, for that long before passing it on;
    * `blackhole` forwards nothing either way (connections are accepted and kept, the bytes
      wait), so that clients time out; `restore` passes the held bytes on and forwards
      normally again (no delay);
    * `reset_all` closes every open connection with a RST on both sides;
    * `stop` closes everything and joins the thread (bounded), re-raising its error if it
      had one.

    A connection whose target refuses it (the server is down) is reset at once. The proxy
    thread only blocks in select(), and every control waits at most ``control_timeout``.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        connect_timeout: float = 2.0,
        control_timeout: float = 5.0,
    ) -> None:
        self._target = (target_host, target_port)
        self._connect_timeout = connect_timeout
        self._control_timeout = control_timeout
        # Shared with the controls, under _cond.
        self._cond = threading.Condition()
        self._requests: list[_Request] = []
        self._stopping = False
        self._finished = False
        self._error: BaseException | None = None
        self._open = 0
        self._accepted = 0
        # The proxy thread's own.
        self._links: set[_Link] = set()
        self._delay = 0.0
        self._blackholed = False
        self._interest: dict[socket.socket, int] = {}
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._wake_reader, self._wake_writer = socket.socketpair()
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((HOST, 0))
            self._listener.listen(128)
            self._listener.setblocking(False)
            self._wake_reader.setblocking(False)
            self._wake_writer.setblocking(False)
            self._selector.register(self._listener, selectors.EVENT_READ, None)
            self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        except BaseException:
            self._close_own_sockets()
            raise
        self._port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy:{self._port}->{target_port}", daemon=True
        )
        self._thread.start()

    # - what it is

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: the target's Redis, through the proxy."""
        return f"redis://{HOST}:{self._port}/0"

    @property
    def target(self) -> tuple[str, int]:
        return self._target

    @property
    def open_connections(self) -> int:
        """Client connections open now (as of the proxy thread's last step)."""
        with self._cond:
            return self._open

    @property
    def accepted(self) -> int:
        """Client connections accepted since the proxy started (each reconnect counts)."""
        with self._cond:
            return self._accepted

    # - controls

    def delay(self, seconds: float) -> None:
        """Hold each chunk read from now on for ``seconds`` before forwarding it (0: none)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"delay must be a finite number of seconds >= 0, not {seconds!r}")
        self._control(_Request("delay", seconds))

    def blackhole(self) -> None:
        """Forward nothing in either direction (accepting and keeping connections)."""
        self._control(_Request("blackhole"))

    def restore(self) -> None:
        """Forward normally again: no delay, no blackhole; bytes held are passed on now."""
        self._control(_Request("restore"))

    def reset_all(self) -> int:
        """Close every open connection abruptly (RST to both ends); return how many."""
        return self._control(_Request("reset"))

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener, and join the thread (within ``timeout``).

        Idempotent. Raises RuntimeError if the thread does not end in time, and re-raises
        the error that ended the proxy thread if one did.
        """
        with self._cond:
            self._stopping = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the proxy thread did not stop within {timeout} s")
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise RuntimeError("the proxy thread failed") from error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _control(self, request: _Request) -> int:
        deadline = time.monotonic() + self._control_timeout
        with self._cond:
            if self._stopping or self._finished:
                raise RuntimeError("the proxy is stopped")
            self._requests.append(request)
        self._wake()
        with self._cond:
            for _ in range(1000):  # each wait ends at the deadline at the latest
                if request.done:
                    return request.result
                if self._finished:
                    raise RuntimeError("the proxy thread ended") from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise RuntimeError(f"the proxy thread did not apply {request.kind!r} in time")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed (stopped)
            self._wake_writer.send(b"\0")

    # - the proxy thread

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as error:
            with self._cond:
                self._error = error
        finally:
            for link in list(self._links):
                self._abort(link)
            self._close_own_sockets()
            with self._cond:
                self._finished = True
                self._open = 0
                self._cond.notify_all()

    def _step(self) -> bool:
        """One turn of the loop: controls, forwarding, then waiting for sockets."""
        if not self._apply_controls():
            return False
        now = time.monotonic()
        for link in list(self._links):
            self._pump(link, now)
        timeout = self._update_interest(now)
        for key, mask in self._selector.select(timeout):
            sock = key.fileobj
            if sock is self._listener:
                self._accept_pending(_ACCEPTS_PER_WAKEUP)
            elif sock is self._wake_reader:
                with contextlib.suppress(OSError):
                    self._wake_reader.recv(4096)
            else:
                link = key.data
                assert isinstance(link, _Link)
                assert isinstance(sock, socket.socket)
                if not link.closed:
                    self._on_ready(link, sock, mask)
        with self._cond:
            self._open = len(self._links)
        return True

    def _apply_controls(self) -> bool:
        with self._cond:
            requests, self._requests = self._requests, []
            stopping = self._stopping
        for request in requests:
            if request.kind == "delay":
                self._delay = request.seconds
            elif request.kind == "blackhole":
                self._blackholed = True
            elif request.kind == "restore":
                self._blackholed = False
                self._delay = 0.0
                now = time.monotonic()
                for link in self._links:
                    for flow in (link.up, link.down):
                        flow.queue = deque((now, data) for _, data in flow.queue)
            elif request.kind == "reset":
                # Connections that completed their handshake but wait in the backlog are
                # open for their clients too.
                self._accept_pending(10_000)
                request.result = len(self._links)
                for link in list(self._links):
                    self._abort(link)
        if requests:
            with self._cond:
                for request in requests:
                    request.done = True
                self._open = len(self._links)
                self._cond.notify_all()
        return not stopping

    def _accept_pending(self, limit: int) -> None:
        for _ in range(limit):
            try:
                client, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # that client gave up already
                continue
            self._open_link(client)

    def _open_link(self, client: socket.socket) -> None:
        with self._cond:
            self._accepted += 1
        client.setblocking(False)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, upstream, time.monotonic() + self._connect_timeout)
        self._links.add(link)
        code = upstream.connect_ex(self._target)
        if code == 0:
            link.connecting = False
        elif code not in (errno.EINPROGRESS, errno.EAGAIN):
            self._abort(link)  # refused: the client sees its connection reset

    def _on_ready(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link.connecting:
            if sock is link.upstream:
                code = link.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    self._abort(link)
                else:
                    link.connecting = False
            return
        if mask & selectors.EVENT_READ:
            flow = link.up if sock is link.client else link.down
            try:
                data = sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # reset by the peer: pass the reset on
                self._abort(link)
                return
            if data is not None:
                flow.queue.append((time.monotonic() + self._delay, data))
                flow.held += len(data)
                flow.ended = not data
        if mask & selectors.EVENT_WRITE and not link.closed:
            self._pump(link, time.monotonic())

    def _pump(self, link: _Link, now: float) -> None:
        """Pass on whatever is due, as far as the receivers take it."""
        if link.closed or link.connecting:
            if link.connecting and now > link.connect_deadline:
                self._abort(link)
            return
        if self._blackholed:
            return
        for flow in (link.up, link.down):
            for _ in range(10_000):  # ends when the queue is empty, not due, or dst is full
                if not flow.queue or flow.queue[0][0] > now:
                    break
                due, data = flow.queue[0]
                if not data:
                    flow.queue.popleft()
                    with contextlib.suppress(OSError):  # the receiver may be gone already
                        flow.dst.shutdown(socket.SHUT_WR)
                    flow.done = True
                    break
                try:
                    sent = flow.dst.send(data)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # the receiver reset or closed its end
                    self._abort(link)
                    return
                flow.held -= sent
                if sent < len(data):
                    flow.queue[0] = (due, data[sent:])
                else:
                    flow.queue.popleft()
        if link.up.done and link.down.done:
            self._close(link, reset=False)

    def _update_interest(self, now: float) -> float:
        """Register what each socket waits for; return how long select() may block."""
        wake_at = now + _IDLE_WAIT
        for link in self._links:
            wanted: dict[socket.socket, int] = {link.client: 0, link.upstream: 0}
            if link.connecting:
                wanted[link.upstream] = selectors.EVENT_WRITE
                wake_at = min(wake_at, link.connect_deadline)
            elif not self._blackholed:
                for flow in (link.up, link.down):
                    if not flow.ended and flow.held < _HELD_LIMIT:
                        wanted[flow.src] |= selectors.EVENT_READ
                    if flow.queue:
                        due = flow.queue[0][0]
                        if due <= now:  # due but not taken: wait until dst has room
                            wanted[flow.dst] |= selectors.EVENT_WRITE
                        else:
                            wake_at = min(wake_at, due)
            for sock, events in wanted.items():
                self._set_interest(sock, events, link)
        return max(0.0, wake_at - now)

    def _set_interest(self, sock: socket.socket, events: int, link: _Link) -> None:
        current = self._interest.get(sock, 0)
        if events == current:
            return
        if not events:
            self._selector.unregister(sock)
            del self._interest[sock]
        elif not current:
            self._selector.register(sock, events, link)
            self._interest[sock] = events
        else:
            self._selector.modify(sock, events, link)
            self._interest[sock] = events

    def _abort(self, link: _Link) -> None:
        self._close(link, reset=True)

    def _close(self, link: _Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        for sock in (link.client, link.upstream):
            if self._interest.pop(sock, 0):
                self._selector.unregister(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()

    def _close_own_sockets(self) -> None:
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()
        self._selector.close()
