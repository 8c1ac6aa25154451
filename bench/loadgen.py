"""HTTP load for the benchmarks, in a process of its own: ``wrk`` with a Lua script cycling
through pre-formatted requests (max rate), or a small asyncio generator on raw sockets
(``loadgen_child``: max rate, or a fixed rate measured from each request's scheduled send,
no coordinated omission). Both check every answer (status 200 and an expected substring) and
report p50/p99, the server's CPU (its process tree, ``/proc``) and their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.common import percentile

REPO = Path(__file__).resolve().parents[1]


class Server(Protocol):
    url: str
    pid: int


def connections_per_process(port: str) -> tuple[int, ...]:
    """The established connections to ``port`` per process holding them, most first (``ss
    -tnp``: every process's with enough privileges, as a benchmark runs); () if unreadable."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    pids = Counter(m.split(",", 1)[0] for m in out.split("pid=")[1:])
    return tuple(sorted(pids.values(), reverse=True))


def process_children(root: int) -> set[int]:
    """The pids of ``root``'s children now (Linux ``/proc``): a server's workers, so that a
    run can tell whether one was replaced (a worker that stops answering its supervisor's
    health check is killed and started afresh)."""
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = entry.joinpath("stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rfind(")") + 2 :].split()[1]) == root:
                out.add(int(entry.name))
    return out


def process_tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its descendants (Linux
    ``/proc``); NaN where that cannot be read."""
    try:
        entries = list(Path("/proc").iterdir())
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return math.nan
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = entry.joinpath("stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    if root not in cpu:
        return math.nan
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


# -- load generators ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    authorization: str
    body: bytes
    content_type: str = "application/json"
    accept: str = ""  # e.g. MCP's "application/json, text/event-stream"

    def raw(self, host: str) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        if self.authorization:
            head.append(f"Authorization: {self.authorization}")
        if self.accept:
            head.append(f"Accept: {self.accept}")
        if self.body:
            head += [f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}"]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass
class LoadResult:
    generator: str
    mode: str  # "max" | "fixed"
    connections: int
    seconds: float
    ok: int
    p50: float
    p99: float
    max: float
    allowed: int
    non200: int = 0
    bad_body: int = 0
    socket_errors: int = 0
    unanswered: int = 0
    first_error: str = ""
    server_cpu: float = math.nan
    gen_cpu: float = math.nan
    target_rate: float = math.nan
    send_delay_p99: float = math.nan
    per_request: int = 1  # decisions per answered request (AuthZEN batch: more than one)
    # The load's open connections per server process a moment into the run, most first (wrk:
    # the workers share one listening socket, and how its connections fall between them
    # moves a figure; bench/README.md, issue 21's sixth part); () when not read.
    split: tuple[int, ...] = ()

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else math.nan

    @property
    def decisions(self) -> int:
        return self.ok * self.per_request

    @property
    def errors(self) -> int:
        return self.non200 + self.bad_body + self.socket_errors + self.unanswered


_WRK_LUA = r"""-- written by bench/loadgen.py: cycle through pre-formatted requests, check answers
local reqs, n, i, expect = {}, 0, 0, "decision"
non200, bad, allowed, first = 0, 0, 0, ""
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  expect = args[2]
  for line in io.lines(args[1]) do
    local m, p, a, c, x, b = line:match(
      "^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    if a ~= "" then headers["Authorization"] = a end
    if x ~= "" then headers["Accept"] = x end
    if b ~= "" then headers["Content-Type"] = c else b = nil end
    n = n + 1
    reqs[n] = wrk.format(m, p, headers, b)
  end
  i = ((tid or 0) * 7919) % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if first == "" then first = tostring(status) .. " " .. (body or ""):sub(1, 200) end
  elseif not body:find(expect, 1, true) then
    bad = bad + 1
    if first == "" then first = "200 without " .. expect .. ": " .. body:sub(1, 200) end
  else
    local _, c = body:gsub('"decision":true', "")
    allowed = allowed + c
  end
end

function done(summary, latency, requests)
  local nn, bb, aa, ff = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    nn = nn + t:get("non200")
    bb = bb + t:get("bad")
    aa = aa + t:get("allowed")
    local f = t:get("first")
    if ff == "" and f ~= nil and f ~= "" then ff = f end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"non200":%d,"bad":%d,' ..
    '"allowed":%d}\n',
    summary.requests, summary.duration, math.floor(latency:percentile(50)),
    math.floor(latency:percentile(99)), latency.max, e.connect, e.read, e.write, e.status,
    e.timeout, nn, bb, aa))
  io.write("BENCHFIRST " .. ff:gsub("\n", " ") .. "\n")
end
"""


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class LoadGen:
    """Runs one load in a separate process (``wrk``, or :func:`loadgen_child` in Python)."""

    def __init__(self, server: Server, workdir: Path, kind: str) -> None:
        self.server = server
        self.workdir = workdir
        self.kind = kind
        self.host = server.url.removeprefix("http://")
        self._files: dict[int, Path] = {}

    def _lines(self, reqs: Sequence[HttpRequest]) -> Path:
        key = id(reqs)
        if key not in self._files:
            path = self.workdir / f"requests-{len(self._files)}.tsv"
            with path.open("wb") as f:
                for r in reqs:
                    head = (
                        f"{r.method}\t{r.path}\t{r.authorization}\t{r.content_type}\t{r.accept}\t"
                    )
                    f.write(head.encode() + r.body + b"\n")
            self._files[key] = path
        return self._files[key]

    def max_rate(
        self, reqs: Sequence[HttpRequest], *, connections: int, seconds: float, expect: str
    ) -> LoadResult:
        if self.kind == "wrk":
            return self._wrk(reqs, connections=connections, seconds=seconds, expect=expect)
        return self._python(reqs, mode="max", connections=connections, seconds=seconds,
                            expect=expect, rate=0)  # fmt: skip

    def fixed_rate(
        self, reqs: Sequence[HttpRequest], *, rate: int, connections: int, seconds: float,
        expect: str, stop: Path | None = None,
    ) -> LoadResult:  # fmt: skip
        """``stop``: a file whose creation ends the run early (its results cover the time
        until then)."""
        return self._python(reqs, mode="fixed", connections=connections, seconds=seconds,
                            expect=expect, rate=rate, stop=stop)  # fmt: skip

    def _wrk(
        self, reqs: Sequence[HttpRequest], *, connections: int, seconds: float, expect: str
    ) -> LoadResult:
        script = self.workdir / "decisions.lua"
        script.write_text(_WRK_LUA)
        lines = self._lines(reqs)
        cmd = [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
            "-s", str(script), self.server.url + reqs[0].path, "--", str(lines), expect,
        ]  # fmt: skip
        server0, gen0 = process_tree_cpu(self.server.pid), _child_cpu()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as wrk:  # fmt: skip
            time.sleep(min(1.0, seconds / 3))
            split = connections_per_process(self.server.url.rsplit(":", 1)[1])
            out, err = wrk.communicate(timeout=seconds + 60)
        proc = subprocess.CompletedProcess(cmd, wrk.returncode, out, err)
        server_cpu, gen_cpu = process_tree_cpu(self.server.pid) - server0, _child_cpu() - gen0
        data: dict[str, Any] | None = None
        first = ""
        for line in proc.stdout.splitlines():
            if line.startswith("BENCHJSON "):
                data = json.loads(line.removeprefix("BENCHJSON "))
            elif line.startswith("BENCHFIRST "):
                first = line.removeprefix("BENCHFIRST ").strip()
        if proc.returncode != 0 or data is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
        ok = data["requests"] - data["non200"] - data["bad"]
        if socket_errors and not first:
            first = (f"socket errors: connect {data['connect']}, read {data['read']}, write "
                     f"{data['write']}, timeout {data['timeout']}")  # fmt: skip
        return LoadResult(
            "wrk", "max", connections, data["duration_us"] / 1e6, ok, data["p50_us"] / 1e6,
            data["p99_us"] / 1e6, data["max_us"] / 1e6, data["allowed"], data["non200"],
            data["bad"], socket_errors, 0, first, server_cpu, gen_cpu, split=split,
        )  # fmt: skip

    def _python(
        self, reqs: Sequence[HttpRequest], *, mode: str, connections: int, seconds: float,
        expect: str, rate: int, stop: Path | None = None,
    ) -> LoadResult:  # fmt: skip
        cfg = self.workdir / "loadgen.json"
        result = self.workdir / "loadgen-result.json"
        cfg.write_text(json.dumps({
            "host": "127.0.0.1", "port": int(self.host.rsplit(":", 1)[1]),
            "requests": str(self._lines(reqs)), "hostheader": self.host, "mode": mode,
            "connections": connections, "seconds": seconds, "rate": rate, "expect": expect,
            "out": str(result), "stop": str(stop) if stop else None,
        }))  # fmt: skip
        cmd = [sys.executable, "-c",
               "import sys; from bench.loadgen import loadgen_child; loadgen_child(sys.argv[1])",
               str(cfg)]  # fmt: skip
        server0, gen0 = process_tree_cpu(self.server.pid), _child_cpu()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                              timeout=seconds + 120)  # fmt: skip
        server_cpu, gen_cpu = process_tree_cpu(self.server.pid) - server0, _child_cpu() - gen0
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{proc.stdout}\n{proc.stderr}")
        data = json.loads(result.read_text())
        lat = data["latencies"]
        return LoadResult(
            "python", mode, connections, data["wall"], data["ok"], percentile(lat, 50),
            percentile(lat, 99), max(lat) if lat else math.nan, data["allowed"],
            data["non200"], data["bad"], data["socket_errors"], data["unanswered"],
            data["first_error"], server_cpu, gen_cpu - data.get("startup_cpu", 0.0),
            float(rate) if mode == "fixed" else math.nan,
            percentile(data["send_delays"], 99) if data["send_delays"] else math.nan,
        )  # fmt: skip


# The Python generator: runs in its own process (cheap: uvloop if present, raw sockets,
# pre-encoded requests, a minimal response parser; no HTTP library).
class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is None or w.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        w.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(str(exc or "connection closed")))


def loadgen_child(config_path: str) -> None:
    startup_cpu = time.process_time()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    cfg = json.loads(Path(config_path).read_text())
    asyncio.run(_loadgen(cfg, startup_cpu))


async def _loadgen(cfg: dict[str, Any], startup_cpu: float) -> None:
    loop = asyncio.get_running_loop()
    host, port, hostheader = cfg["host"], cfg["port"], cfg["hostheader"]
    reqs: list[bytes] = []
    for line in Path(cfg["requests"]).read_bytes().splitlines():
        method, path, auth, ctype, accept, body = line.split(b"\t", 5)
        reqs.append(
            HttpRequest(
                method.decode(), path.decode(), auth.decode(), body, ctype.decode(),
                accept.decode(),
            ).raw(hostheader)
        )  # fmt: skip
    expect = cfg["expect"].encode()
    allow = b'"decision":true'
    n_conn, seconds, mode, rate = cfg["connections"], cfg["seconds"], cfg["mode"], cfg["rate"]
    latencies: list[float] = []
    send_delays: list[float] = []
    stats = Counter[str]()
    first_error = [""]
    clock = time.perf_counter

    async def connect() -> _Conn:
        _, conn = await loop.create_connection(_Conn, host, port)
        return conn

    conns = [await connect() for _ in range(n_conn)]

    async def exchange(k: int, raw: bytes) -> bool:
        conn = conns[k]
        if conn.closed:
            conn = conns[k] = await connect()
        conn.waiter = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(raw)
        try:
            status, body = await conn.waiter
        except Exception as exc:
            stats["socket_errors"] += 1
            first_error[0] = first_error[0] or f"socket: {exc}"
            return False
        if status != 200:
            stats["non200"] += 1
            first_error[0] = first_error[0] or f"{status} {body[:200]!r}"
            return False
        if expect not in body:
            stats["bad"] += 1
            first_error[0] = first_error[0] or f"200 without {cfg['expect']}: {body[:200]!r}"
            return False
        stats["ok"] += 1
        stats["allowed"] += body.count(allow)
        return True

    start = clock()
    if mode == "max":
        deadline = start + seconds

        async def closed(k: int) -> None:
            i = k * 7919
            while clock() < deadline:
                i += 1
                t0 = clock()
                if await exchange(k, reqs[i % len(reqs)]):
                    latencies.append(clock() - t0)

        await asyncio.gather(*(closed(k) for k in range(n_conn)))
        wall = clock() - start
    else:
        queue: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()
        total = int(rate * seconds)
        stop = Path(cfg["stop"]) if cfg.get("stop") else None

        async def worker(k: int) -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                scheduled, i = item
                send_delays.append(clock() - scheduled)
                if await exchange(k, reqs[i % len(reqs)]):
                    done = clock()
                    latencies.append(done - scheduled)
                    last[0] = max(last[0], done)

        last = [0.0]
        workers = [asyncio.ensure_future(worker(k)) for k in range(n_conn)]
        t0 = clock() + 0.05
        for i in range(total):
            if stop is not None and i % 16 == 0 and stop.exists():
                total, seconds = i, i / rate  # stopped early: the run is what was scheduled
                break
            at = t0 + i / rate
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((at, i))
        for _ in workers:
            queue.put_nowait(None)
        _, pending = await asyncio.wait(workers, timeout=30)
        for w in pending:
            w.cancel()
        # Achieved rate: answers over the time from the first scheduled send to the last
        # answer (= the target when the server keeps up; less when a backlog had to drain).
        wall = max(seconds, last[0] - t0)
        stats["unanswered"] = total - stats["ok"] - stats["non200"] - stats["bad"] - \
            stats["socket_errors"]  # fmt: skip
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    Path(cfg["out"]).write_text(json.dumps({
        "latencies": latencies, "send_delays": send_delays, "wall": wall, "ok": stats["ok"],
        "allowed": stats["allowed"], "non200": stats["non200"], "bad": stats["bad"],
        "socket_errors": stats["socket_errors"], "unanswered": stats["unanswered"],
        "first_error": first_error[0], "startup_cpu": startup_cpu,
    }))  # fmt: skip
