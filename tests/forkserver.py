"""``python -m tether ARGS`` as a real process, without importing its libraries every time.

A suite run starts the ``tether`` command some 300 times and a server some 60 times; each start
spent most of its CPU importing the same third-party libraries (Typer, Rich, pydantic, httpx,
FastAPI, SQLAlchemy, ...: ~0.25 s of a 0.3 s CLI call, ~0.6 s of a server start). Like
``multiprocessing``'s ``forkserver``, each test process keeps one *zygote*: a Python process
that imported those libraries once, and forks a child per command. The child is a process of
its own: it gets the test's argument vector, environment, working directory and standard
streams (passed as file descriptors), imports Tether itself fresh (so every import-time
decision of Tether's, and its settings, are made in the child, from the child's environment),
runs ``python -m tether`` exactly as the interpreter would, and exits with its status, which
the zygote reports back. Nothing of Tether is imported by the zygote (``_tether_free``
checks it before every fork).

Scripts that call ``tether`` by name (the README walkthroughs, run by ``bash``) find a small
``tether`` first on their ``PATH`` (:func:`on_path`): a Python started without ``site`` that
hands its own standard streams, arguments, environment and directory to the zygote and exits
with the child's status.

What a zygote child cannot show is what the *interpreter* does before Tether runs: which
modules a start imports and what it costs (test_cli_startup.py, test_import_hygiene.py and
test_schema_template.py keep a real ``subprocess`` for that), and the console script that
``pip`` installs (test_forkserver.py runs it).

This module imports only the standard library at the top: the zygote runs it.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import json
import locale
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent

# What a CLI call and a server start import, of the libraries only: never ``tether`` (its
# import-time work must happen in the child, from the child's environment), nor what a start
# must not import (Alembic, Mako, Pygments: test_schema_template.py), nor ``prometheus_client``,
# which picks its value class from PROMETHEUS_MULTIPROC_DIR when imported.
_PROBE = """
import importlib, json, pkgutil, sys
import tether
before = set(sys.modules)
for m in pkgutil.walk_packages(tether.__path__, "tether."):
    if ".migrations" not in m.name and not m.name.endswith("__main__"):
        try:
            importlib.import_module(m.name)
        except Exception:
            pass
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps([m for m in sys.modules if m not in before]))
"""
# ... and what Tether imports inside functions, on the way to a request or a served app
_LAZY = (
    "httpx2", "truststore", "idna", "encodings.idna", "rich.console", "typer._adapters",
    "typer._click.decorators", "httpcore2._sync.connection_pool", "httpcore2._sync.http11",
    "httpcore2._backends.sync", "anyio.streams.tls", "rich._emoji_codes", "uvicorn.main",
    "uvicorn.lifespan.on", "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto", "uvicorn.protocols.websockets.auto", "psycopg",
)  # fmt: skip
_NEVER = ("tether", "tests", "alembic", "mako", "pygments", "prometheus_client", "__main__")
_STREAMS = 3


def _tether_free() -> bool:
    return not any(name == "tether" or name.startswith("tether.") for name in sys.modules)


# --- the zygote (runs in its own process) ---------------------------------------------------


def _preload(names: list[str]) -> None:
    for name in names:
        if name.split(".")[0] in _NEVER:
            continue
        with contextlib.suppress(Exception):  # a module that only imports as part of another
            __import__(name)
    if not _tether_free():  # pragma: no cover - a library imported Tether
        raise RuntimeError("a preloaded library imported tether")


def _serve(path: str) -> dict[str, Any] | None:
    """Accept spawn requests on the Unix socket ``path`` until standard input closes (the test
    process ended). Returns in a forked child only: the request it is to run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    waiting: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                return None
            if key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    conn = waiting.pop(pid, None)
                    if conn is not None:
                        with contextlib.suppress(OSError):
                            conn.send(str(os.waitstatus_to_exitcode(status)).encode())
                        conn.close()
                continue
            conn, _ = listener.accept()
            msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, _STREAMS)
            request = json.loads(msg)
            if not _tether_free():  # pragma: no cover - guarded by _preload
                raise RuntimeError("the zygote imported tether")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                sel.close()
                listener.close()
                for other in waiting.values():
                    other.close()
                conn.close()
                os.close(wake_r)
                os.close(wake_w)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                return dict(request)
            for fd in fds:
                os.close(fd)
            conn.send(str(pid).encode())
            waiting[pid] = conn


def _become(request: dict[str, Any]) -> None:
    """In the forked child: take on the request's environment, directory and arguments, run
    ``python -m tether``, and end as the interpreter would (:func:`_exit`)."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # what `python -m` puts first; the repository root was only the zygote's
    sys.path[:] = [request["cwd"], *(p for p in sys.path if p != str(ROOT))]
    sys.argv = ["-m", *request["args"]]
    try:
        runpy.run_module("tether", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        _exit(exc.code)
    except BaseException as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        _exit(1)
    _exit(0)


def _exit(code: object) -> None:
    """What the interpreter does when a program ends, short of tearing down every module and
    object: that teardown of a heap the size of the zygote's copies every page it touches and
    cost ~0.3 s of CPU per command, more than the command. Threads are joined, ``atexit``
    handlers run and the standard streams flushed as at any exit; a file left open and
    unflushed would lose its tail here (and fail its test) where a real exit might not."""
    import atexit

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def zygote_main() -> None:  # pragma: no cover - runs in the zygote
    path, names = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # nothing from the working directory; the repository is on PYTHONPATH
    _preload(names)
    if threading.active_count() != 1:
        raise RuntimeError("a preloaded library started a thread: forking is unsafe")
    gc.freeze()  # a child's collections then leave the libraries' objects (and their pages) be
    request = _serve(path)
    if request is not None:
        _become(request)


# --- the test process's side ----------------------------------------------------------------


class Zygote:
    """One per test process, started on first use; it ends when the test process does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="tether-zygote-"))
        self.path = self._dir / "spawn.sock"

    def ensure(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            probe = subprocess.run(
                [sys.executable, "-c", _PROBE, *_LAZY], capture_output=True, text=True, check=True
            )
            self.path.unlink(missing_ok=True)
            modules = self._dir / "modules.json"
            modules.write_text(probe.stdout)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from tests.forkserver import zygote_main; zygote_main()",
                 str(self.path), str(modules)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=env,
                cwd=self._dir,
            )  # fmt: skip
            atexit.register(self.close)
            deadline = time.monotonic() + 60
            while not self.path.exists():
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the tether zygote did not start")
                time.sleep(0.01)

    def close(self) -> None:
        """End the zygote (its children are the tests' to stop)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def spawn(
        self, args: list[str], *, env: Mapping[str, str], cwd: Path | str | None, streams: list[int]
    ) -> Child:
        """Fork ``python -m tether *args`` with ``streams`` as its fds 0, 1 and 2."""
        self.ensure()
        request = {"args": args, "env": dict(env), "cwd": str(cwd or Path.cwd())}
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for _ in range(100):  # the listener may be just up
            try:
                conn.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.01)
        socket.send_fds(conn, [json.dumps(request).encode()], streams)
        pid = int(conn.recv(64))
        return Child(pid, conn)


_ZYGOTE = Zygote()


class Child:
    """The subset of :class:`subprocess.Popen` that tests use, for a zygote's child."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn

    def _receive(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                data = self._conn.recv(64)
            except TimeoutError:
                return None
            except BlockingIOError:
                return None
            self.returncode = int(data) if data else -signal.SIGKILL
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._receive(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._receive(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(["tether"], timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# Found first on a script's PATH by :func:`on_path`. `-IS` (one shebang argument): no site, no
# user environment.
_SHIM = """#!{python} -IS
import json, os, socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.connect(os.environ.pop("{variable}"))
request = {{"args": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}
socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
conn.recv(64)  # the child's pid
code = int(conn.recv(64) or -9)
sys.exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says
"""
_SHIM_VARIABLE = "TESTS_TETHER_ZYGOTE"


def on_path(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a script that runs ``tether`` by name: the zygote's ``tether`` first on its
    ``PATH``, then the virtual environment's (``python``, ``pip``), then ``env``'s own."""
    _ZYGOTE.ensure()
    shim = _ZYGOTE.path.parent / "bin" / "tether"
    if not shim.exists():
        shim.parent.mkdir(exist_ok=True)
        shim.write_text(_SHIM.format(python=sys.executable, variable=_SHIM_VARIABLE))
        shim.chmod(0o755)
    venv = Path(sys.executable).parent
    path = os.pathsep.join([str(shim.parent), str(venv), env.get("PATH", "")])
    return {**env, "PATH": path, _SHIM_VARIABLE: str(_ZYGOTE.path)}


@contextlib.contextmanager
def _devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def spawn(
    *args: str, env: Mapping[str, str], cwd: Path | str | None = None, stdout: IO[Any] | int
) -> Child:
    """A long-running ``python -m tether ARGS`` (a server): no standard input, stdout and
    stderr both to ``stdout`` (a file or descriptor)."""
    out = stdout if isinstance(stdout, int) else stdout.fileno()
    with _devnull() as null:
        return _ZYGOTE.spawn(list(args), env=env, cwd=cwd, streams=[null, out, out])


def _text(data: bytes) -> str:
    # what subprocess's text=True does: the locale's encoding, universal newlines
    wrapper = io.TextIOWrapper(io.BytesIO(data), encoding=locale.getpreferredencoding(False))
    return wrapper.read()


def run(
    *args: str, env: Mapping[str, str], cwd: Path | str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m tether ARGS`` as ``subprocess.run(..., capture_output=True, text=True,
    stdin=DEVNULL)`` runs it: stdout and stderr to pipes, the exit code left to the caller."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        with _devnull() as null:
            child = _ZYGOTE.spawn(list(args), env=env, cwd=cwd, streams=[null, out_w, err_w])
    finally:
        os.close(out_w)
        os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                child.kill()
                for fd in chunks:
                    os.close(fd)
                raise subprocess.TimeoutExpired(["tether", *args], timeout)
            for key, _ in sel.select(left):
                fd = int(key.fd)
                data = os.read(fd, 1 << 16)
                if data:
                    chunks[fd].append(data)
                else:
                    sel.unregister(fd)
    for fd in chunks:
        os.close(fd)
    code = child.wait(max(deadline - time.monotonic(), 1))
    return subprocess.CompletedProcess(
        ["tether", *args], code, _text(b"".join(chunks[out_r])), _text(b"".join(chunks[err_r]))
    )
