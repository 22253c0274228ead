"""The gateway's cost: added latency and throughput against calling the provider directly, in one run.

    .venv/bin/python bench/gateway.py [--samples 200] [--seconds 3] [--concurrency 32]
        [--litellm [PATH]] [--json bench/results/gateway.json]

One fake OpenAI Chat Completions provider (bench/_fast_upstream.py: asyncio, canned answers; the tests'
threaded stdlib fake would be the bottleneck of the throughput figure, and its own direct throughput is measured
too, to show it), reached three ways by the same async httpx client:

* ``direct``   the provider itself;
* ``gateway``  fleetd's gateway (`fleetd daemon run --gateway`), one route over one openai_compat profile;
* ``litellm``  with ``--litellm``: the LiteLLM proxy with one model on the same provider (its executable,
               default .cache/litellm/bin/litellm from
               ``python -m venv .cache/litellm && .cache/litellm/bin/pip install 'litellm[proxy]'``).

Measured: p50 latency of a small non-streaming request, p50 time to the first body byte of a streaming one (both
one request at a time, the targets interleaved in rounds so load on a shared machine hits them alike), and
requests/s of small non-streaming requests with bounded concurrency. Targets (issue 11): added p50 <= 2 ms,
added TTFT <= 5 ms, >= 500 requests/s through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import FLEETD  # noqa: E402
from tests.integration.fake_provider import running_fake_provider  # noqa: E402

ROUTE = "bench"
UPSTREAM_MODEL = "fake-upstream"
PROVIDER_KEY = "sk-bench-provider"
LITELLM_KEY = "sk-bench-litellm-master-0123456789abcdef"
PROMPT_TOKENS = 812  # both fakes' usage
MESSAGES = [{"role": "user", "content": "say hi"}]
TARGETS = {"added_p50_ms": 2.0, "added_ttft_ms": 5.0, "gateway_rps": 500.0}


@dataclass
class Target:
    name: str
    base: str  # …/v1
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    rps: float | None = None
    errors: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until anything answers HTTP at `url` (the status does not matter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before answering")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f} s")


class Processes:
    """The child processes of one bench run, ended (by their own pid) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="flbgw-", dir="/tmp"))

    def start(self, argv: list[str], env: dict[str, str], log: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(self.dir / log, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, env=env, stderr=out, start_new_session=True, **kwargs)
        out.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_upstream(procs: Processes) -> str:
    proc = procs.start([sys.executable, str(ROOT / "bench" / "_fast_upstream.py")], dict(os.environ), "upstream.log",
                       stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return f"http://127.0.0.1:{port}"


def start_gateway(procs: Processes, upstream: str) -> Target:
    port = free_port()
    env = {**os.environ, "FLEETD_HOME": str(procs.dir / "home"), "FLEETD_SECRET_STORE": "file",
           "FLEETD_LOG_LEVEL": "WARNING"}  # fmt: skip
    proc = procs.start([FLEETD, "daemon", "run", "--gateway", f"127.0.0.1:{port}"], env, "daemon.log")

    def cli(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([FLEETD, *args], env=env, capture_output=True, text=True, input=stdin, check=False)
        if done.returncode != 0:
            raise SystemExit(f"fleetd {' '.join(args)}: {done.stderr}\n{procs.log('daemon.log')}")
        return done.stdout

    wait_http(f"http://127.0.0.1:{port}/v1/models", 30, proc, "the gateway")
    cli("profile", "add", "upstream", "--backend", "openai_compat", "--base-url", f"{upstream}/v1",
        "--model", UPSTREAM_MODEL, "--api-key-stdin", stdin=PROVIDER_KEY)  # fmt: skip
    cli("route", "add", ROUTE, "--chain", f"upstream@{UPSTREAM_MODEL}", "--api", "chat")
    key = json.loads(cli("gateway", "key", "add", "bench", "--json"))["key"]
    return Target("gateway", f"http://127.0.0.1:{port}/v1", ROUTE, {"authorization": f"Bearer {key}"})


def start_litellm(procs: Processes, executable: str, upstream: str) -> Target:
    port = free_port()
    config = procs.dir / "litellm.yaml"
    # JSON is YAML: one model on the same upstream, no database, no callbacks, no outside traffic.
    config.write_text(json.dumps({
        "model_list": [{"model_name": ROUTE, "litellm_params": {
            "model": f"openai/{UPSTREAM_MODEL}", "api_base": f"{upstream}/v1", "api_key": PROVIDER_KEY}}],
        "litellm_settings": {"telemetry": False, "drop_params": True, "num_retries": 0},
        # It refuses to start without a key; with one (and no database) it checks it in memory, as fair a match
        # for the gateway's key check as there is.
        "general_settings": {"master_key": LITELLM_KEY},
    }))  # fmt: skip
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"}  # fmt: skip
    argv = [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = procs.start(argv, env, "litellm.log", stdout=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", 120, proc, "the LiteLLM proxy")
    except SystemExit as exc:
        raise SystemExit(f"{exc}\n{procs.log('litellm.log')}") from None
    return Target("litellm", f"http://127.0.0.1:{port}/v1", ROUTE, {"authorization": f"Bearer {LITELLM_KEY}"})


class Connection:
    """One keep-alive HTTP/1.1 connection: a minimal client (Content-Length or chunked answers), so the load
    generator stays cheap next to the servers it measures (httpx's async pool itself slows to ~100 requests/s at
    32 connections on this machine)."""

    def __init__(self, target: Target) -> None:
        url = httpx.URL(target.base)
        self.target = target
        self.host, self.port, self.prefix = url.host, url.port or 80, url.path.rstrip("/")
        self.extra = "".join(f"{name}: {value}\r\n" for name, value in target.headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, payload: dict[str, Any]) -> tuple[int, bytes, float]:
        """(status, body, ms from sending to the first body byte)."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(payload).encode()
        head = (f"POST {self.prefix}/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{self.extra}\r\n")  # fmt: skip
        start = time.perf_counter()
        self.writer.write(head.encode() + data)
        status = int((await self.reader.readline()).split()[1])
        length, chunked, close = None, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value
            elif name == "connection":
                close = value == "close"
        first: float | None = None
        if chunked:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                first = first or (time.perf_counter() - start) * 1000
                await self.reader.readline()
            await self.reader.readline()
            body = b"".join(parts)
        else:
            body = await self.reader.readexactly(length or 0)
            first = (time.perf_counter() - start) * 1000
        if close:
            self.writer.close()
        return status, body, first or 0.0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def one_call(conn: Connection) -> float:
    start = time.perf_counter()
    status, body, _ = await conn.post({"model": conn.target.model, "messages": MESSAGES})
    elapsed = (time.perf_counter() - start) * 1000
    if status != 200 or json.loads(body)["usage"]["prompt_tokens"] != PROMPT_TOKENS:
        raise SystemExit(f"{conn.target.name}: {status} {body[:500]!r}")
    return elapsed


async def one_stream(conn: Connection) -> float:
    payload = {"model": conn.target.model, "messages": MESSAGES, "stream": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
    status, body, first = await conn.post(payload)
    if status != 200 or b"[DONE]" not in body:
        raise SystemExit(f"{conn.target.name}: {status} {body[:500]!r}")
    return first


async def latencies(targets: list[Target], samples: int, rounds: int = 10) -> None:
    """p50 inputs: `samples` requests per target, one at a time, the targets taking turns in `rounds` blocks."""
    conns = [Connection(target) for target in targets]
    for conn in conns:  # warm the connections and whatever caches each side has
        for _ in range(20):
            await one_call(conn)
            await one_stream(conn)
    per_round = max(1, samples // rounds)
    for _ in range(rounds):
        for conn in conns:
            conn.target.latency_ms.extend([await one_call(conn) for _ in range(per_round)])
            conn.target.ttft_ms.extend([await one_stream(conn) for _ in range(per_round)])
    for conn in conns:
        conn.close()


async def throughput(target: Target, seconds: float, concurrency: int) -> float:
    """Requests/s of `concurrency` connections each sending small requests back to back for `seconds`."""
    conns = [Connection(target) for _ in range(concurrency)]
    await asyncio.gather(*(one_call(conn) for conn in conns))  # warm-up: every connection opened
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await one_call(conn)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(conn) for conn in conns))
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    return done / elapsed


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200, help="latency samples per target and kind")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput measurement")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--litellm",
        nargs="?",
        const=str(ROOT / ".cache" / "litellm" / "bin" / "litellm"),
        help="also run the LiteLLM proxy (its executable, default .cache/litellm/bin/litellm)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gateway.json")
    args = parser.parse_args()

    # Killed (a timeout, Ctrl-C from a parent): still end the daemon and the fakes in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Processes()
    try:
        upstream = start_upstream(procs)
        direct = Target("direct", f"{upstream}/v1", UPSTREAM_MODEL, {"authorization": f"Bearer {PROVIDER_KEY}"})
        targets = [direct, start_gateway(procs, upstream)]
        if args.litellm:
            targets.append(start_litellm(procs, args.litellm, upstream))
        asyncio.run(latencies(targets, args.samples))
        for target in targets:
            target.rps = asyncio.run(throughput(target, args.seconds, args.concurrency))
        with running_fake_provider() as stdlib_fake:  # the tests' fake, direct: why the bench has its own
            stdlib = Target("direct (tests' stdlib fake)", f"{stdlib_fake.base_url}/v1", UPSTREAM_MODEL)
            stdlib.rps = asyncio.run(throughput(stdlib, args.seconds, args.concurrency))
    finally:
        procs.close()

    base_lat, base_ttft = p50(direct.latency_ms), p50(direct.ttft_ms)
    rows = []
    for target in targets:
        lat, ttft = p50(target.latency_ms), p50(target.ttft_ms)
        rows.append({"target": target.name, "p50_ms": round(lat, 3), "added_p50_ms": round(lat - base_lat, 3),
                     "ttft_p50_ms": round(ttft, 3), "added_ttft_ms": round(ttft - base_ttft, 3),
                     "p90_ms": round(statistics.quantiles(target.latency_ms, n=10)[-1], 3),
                     "requests_per_s": round(target.rps or 0, 1)})  # fmt: skip
    rows.append({"target": stdlib.name, "requests_per_s": round(stdlib.rps or 0, 1)})

    print(f"{'target':28}  {'p50 ms':>7}  {'added':>6}  {'p90 ms':>7}  {'TTFT p50':>8}  {'added':>6}  {'req/s':>7}")
    for row in rows:
        if "p50_ms" in row:
            print(f"{row['target']:28}  {row['p50_ms']:7.2f}  {row['added_p50_ms']:+6.2f}  {row['p90_ms']:7.2f}  "
                  f"{row['ttft_p50_ms']:8.2f}  {row['added_ttft_ms']:+6.2f}  {row['requests_per_s']:7.0f}")  # fmt: skip
        else:
            print(f"{row['target']:28}  {'':7}  {'':6}  {'':7}  {'':8}  {'':6}  {row['requests_per_s']:7.0f}")
    gateway = rows[1]
    verdict = {
        "added_p50_ms": gateway["added_p50_ms"] <= TARGETS["added_p50_ms"],
        "added_ttft_ms": gateway["added_ttft_ms"] <= TARGETS["added_ttft_ms"],
        "gateway_rps": gateway["requests_per_s"] >= TARGETS["gateway_rps"],
    }
    print("targets: " + ", ".join(f"{k} {'met' if ok else 'MISSED'} ({TARGETS[k]:g})" for k, ok in verdict.items()))
    if not args.litellm:
        print("litellm: not run (add --litellm to run it too)")
    result = {"samples": args.samples, "seconds": args.seconds, "concurrency": args.concurrency,
              "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "rows": rows, "targets": TARGETS,
              "met": verdict}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
