"""First ingestion of Claude Code transcripts vs `ccusage daily --offline`, the 1 MB append, the daemon's RSS.

    bash scripts/install-bench.sh          # once: ccusage into the git-ignored .cache/bench
    .venv/bin/python bench/ingest.py [--size 532] [--files 2000] [--repeat 3] [--appends 5] [--json out.json]

Generates (once per size/seed, cached under .cache/bench/transcripts) Claude Code transcripts the way Claude Code
writes them: per turn a user line (a prompt, or a tool result carrying the tool's output twice, in `message` and in
`toolUseResult`), then one assistant line per content block (thinking, text, tool_use) repeating the message id,
request id and usage; some streamed copies carry a smaller output count than the last; sub-agent files on a
sidechain; resumed sessions that replay earlier turns of another file; Task results with a `usage` of their own;
`<synthetic>` API-error lines; system and file-history lines. The generator knows the ground truth: each
(message id, request id) once, at its largest copy.

Measured, each against the same files: fleetd's first ingestion (a fresh daemon, `profile add` until `/v1/usage`
shows the ground truth in a 7-day window), `ccusage daily --offline --json` (both totals checked against the
ground truth), then 1 MB appended to one transcript until `/v1/usage` shows it, and the daemon's RSS after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil

from bench._common import ThrowawayDaemon
from fleetd import paths

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
CCUSAGE = CACHE / "bin" / "ccusage"
MB = 1 << 20
FIELDS = ("input", "output", "cache_read", "cache_write")
_VOCABULARY = """the a to of and in that is for it with as on be this by are not from or have an at which file test
function return value error line we should will fix update config run check build module import class self def none
true false path data result output input string list dict key index loop call method user request response"""
WORDS = _VOCABULARY.split()
CODE = [
    'def {w}(self, {v}: int) -> str:\n    return f"{{{v}!r}}"\n',
    '    if {v} is None:\n        raise ValueError("{w} missing")\n',
    "import {w}\nfrom {w}.{v} import {v}_{w}\n",
    "for {v} in range(10):\n    {w}[{v}] = '{w}\\t{v}'\n",
    '{{"{w}": [{v}, "{v}"], "ok": true}}\n',
]


def text_pool(rng: random.Random, size: int) -> str:
    """Prose and code (quotes, backslashes, tabs, newlines: what JSON must escape) to cut content from."""
    parts, total = [], 0
    while total < size:
        if rng.random() < 0.4:
            piece = rng.choice(CODE).format(w=rng.choice(WORDS), v=rng.choice(WORDS))
        else:
            piece = " ".join(rng.choices(WORDS, k=rng.randint(5, 25))).capitalize() + ". "
        parts.append(piece)
        total += len(piece)
    return "".join(parts)


@dataclass
class Truth:
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    messages: int = 0

    @property
    def total(self) -> int:
        return sum(self.tokens.values())

    def add(self, usage: dict[str, int]) -> None:
        self.messages += 1
        self.tokens["input"] += usage["input_tokens"]
        self.tokens["output"] += usage["output_tokens"]
        self.tokens["cache_read"] += usage["cache_read_input_tokens"]
        self.tokens["cache_write"] += usage["cache_creation_input_tokens"]


class Writer:
    """Claude Code's lines for one generated corpus, with its ground truth."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pool = text_pool(self.rng, 2 * MB)
        self.truth = Truth()
        self.serial = 0
        self.salt = f"{seed}:"

    def uid(self, prefix: str = "") -> str:
        self.serial += 1
        digest = hashlib.blake2b(f"{self.salt}{prefix}{self.serial}".encode(), digest_size=16).hexdigest()
        if prefix:
            return prefix + digest[:24]
        return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"

    def text(self, n: int) -> str:
        start = self.rng.randrange(0, len(self.pool) - n - 1)
        return self.pool[start : start + n]

    @staticmethod
    def line(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def head(self, session: str, cwd: str, sidechain: bool, parent: str | None) -> dict[str, Any]:
        return {"parentUuid": parent, "isSidechain": sidechain, "userType": "external", "cwd": cwd,
                "sessionId": session, "version": "2.1.330", "gitBranch": "main"}  # fmt: skip

    def usage(self) -> dict[str, Any]:
        write = self.rng.choice((0, 0, self.rng.randint(200, 20000)))
        return {
            "input_tokens": self.rng.randint(1, 12),
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": self.rng.randint(5000, 150000),
            "cache_creation": {"ephemeral_5m_input_tokens": write, "ephemeral_1h_input_tokens": 0},
            "output_tokens": self.rng.randint(20, 2500),
            "service_tier": "standard",
        }

    def turn(self, session: str, cwd: str, sidechain: bool, at: datetime, size: int) -> list[bytes]:
        """A user line (prompt or tool result) and the assistant's reply, one line per content block."""
        out, parent = [], self.uid()
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        head = self.head(session, cwd, sidechain, parent)
        tool_id = "toolu_" + self.uid("x")[1:]
        if self.rng.random() < 0.25:
            content: Any = self.text(self.rng.randint(100, 800))
            user = {**head, "type": "user", "message": {"role": "user", "content": content}}
        else:
            body = self.text(max(200, size // 2))
            user = {**head, "type": "user",
                    "message": {"role": "user", "content": [{"tool_use_id": tool_id, "type": "tool_result",
                                                             "content": body}]},
                    "toolUseResult": {"stdout": body, "stderr": "", "interrupted": False,
                                      "isImage": False}}  # fmt: skip
            if self.rng.random() < 0.03:  # a Task tool's result: a "usage" of its own, counted by no one
                user["toolUseResult"] = {"status": "completed", "totalTokens": 12000,
                                         "usage": {"input_tokens": 5, "output_tokens": 900}}  # fmt: skip
        out.append(self.line({**user, "uuid": self.uid(), "timestamp": stamp}))
        mid, rid, usage = self.uid("msg_01"), self.uid("req_011"), self.usage()
        blocks: list[dict[str, Any]] = []
        if self.rng.random() < 0.5:
            blocks.append({"type": "thinking", "thinking": self.text(self.rng.randint(200, 1200)),
                           "signature": hashlib.sha512(mid.encode()).hexdigest() * 4})  # fmt: skip
        blocks.append({"type": "text", "text": self.text(self.rng.randint(50, 600))})
        if self.rng.random() < 0.6:
            command = self.text(self.rng.randint(20, 300))
            blocks.append({"type": "tool_use", "id": tool_id, "name": "Bash",
                           "input": {"command": command, "description": "run"}})  # fmt: skip
        streamed = self.rng.random() < 0.2  # earlier copies carry a smaller output count; the last one is whole
        for i, block in enumerate(blocks):
            copy = dict(usage)
            if streamed and i < len(blocks) - 1:
                copy["output_tokens"] = self.rng.randint(1, usage["output_tokens"])
            message = {"id": mid, "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                       "content": [block], "stop_reason": None, "stop_sequence": None, "usage": copy}  # fmt: skip
            at += timedelta(milliseconds=self.rng.randint(50, 900))
            stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.append(self.line({**head, "message": message, "requestId": rid, "type": "assistant",
                                  "uuid": self.uid(), "timestamp": stamp}))  # fmt: skip
        self.truth.add(usage)
        if self.rng.random() < 0.02:  # an API error Claude Code writes as a synthetic assistant message
            zero = dict.fromkeys(("input_tokens", "output_tokens", "cache_creation_input_tokens",
                                  "cache_read_input_tokens"), 0)  # fmt: skip
            message = {"id": self.uid("msg_01"), "type": "message", "role": "assistant", "model": "<synthetic>",
                       "content": [{"type": "text", "text": "API Error: 529 Overloaded"}],
                       "stop_reason": "stop_sequence", "stop_sequence": "", "usage": zero}  # fmt: skip
            out.append(self.line({**head, "message": message, "type": "assistant", "uuid": self.uid(),
                                  "timestamp": stamp, "isApiErrorMessage": True}))  # fmt: skip
        if self.rng.random() < 0.15:
            out.append(self.line({**head, "type": "system", "subtype": "informational", "content": self.text(80),
                                  "level": "info", "uuid": self.uid(), "timestamp": stamp}))  # fmt: skip
        if self.rng.random() < 0.1:
            out.append(self.line({"type": "file-history-snapshot", "messageId": self.uid(),
                                  "snapshot": {"trackedFileBackups": {}, "timestamp": stamp}}))  # fmt: skip
        return out


def generate(root: Path, size_mb: float, files: int, seed: int, now: datetime) -> Truth:
    """`files` transcripts of about `size_mb` MB in all, timestamps within the last 6 days of `now`."""
    writer = Writer(seed)
    per_file = size_mb * MB / files
    rng = writer.rng
    written: list[list[bytes]] = []  # a few earlier files' turns, for resumed sessions to replay
    for n in range(files):
        project = f"-home-user-src-project{n % 37:02d}"
        session = writer.uid()
        path = root / "projects" / project / f"{session}.jsonl"
        sidechain = n % 10 == 9  # a sub-agent's file beside its parent session's
        if sidechain and written:
            path = root / "projects" / project / session / "subagents" / f"agent-{writer.uid('a')[1:9]}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        at = now - timedelta(days=6) + timedelta(seconds=rng.uniform(0, 6 * 86400 - 4 * 3600))
        lines: list[bytes] = []
        if n % 20 == 5 and written:  # a resumed session: the earlier conversation again, same ids
            lines.extend(rng.choice(written)[:40])
        size = sum(map(len, lines))
        turns: list[bytes] = []
        while size < per_file:
            turn = writer.turn(session, f"/home/user/src/project{n % 37:02d}", sidechain, at,
                               int(rng.lognormvariate(8.0, 0.9)))  # fmt: skip
            turns.extend(turn)
            size += sum(map(len, turn))
            at += timedelta(seconds=rng.uniform(5, 60))
        lines.extend(turns)
        if len(written) < 50:
            written.append(turns)
        path.write_bytes(b"".join(lines))
    return writer.truth


def corpus(size_mb: float, files: int, seed: int) -> tuple[Path, Truth, datetime]:
    """The generated transcripts, cached: regenerated when older than a day (the 7-day window must cover them)."""
    root = CACHE / "transcripts" / f"s{size_mb:g}-f{files}-r{seed}"
    meta = root / "truth.json"
    now = datetime.now(UTC)
    if meta.exists():
        saved = json.loads(meta.read_text())
        made = datetime.fromisoformat(saved["now"])
        if now - made < timedelta(days=1):
            return root / "claude", Truth(saved["tokens"], saved["messages"]), made
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    truth = generate(root / "claude", size_mb, files, seed, now)
    meta.write_text(json.dumps({"now": now.isoformat(), "tokens": truth.tokens, "messages": truth.messages}))
    print(f"(generated {size_mb:g} MB in {files} files in {time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return root / "claude", truth, now


def tree_size(root: Path) -> tuple[int, int]:
    found = [p for p in root.rglob("*.jsonl")]
    return len(found), sum(p.stat().st_size for p in found)


# -- fleetd ---------------------------------------------------------------------------------------


def api_get(sock_path: Path, path: str) -> Any:
    request = f"GET {path} HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n\r\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(sock_path))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        raise RuntimeError("chunked response not expected")
    return json.loads(body)


def used(sock_path: Path) -> float:
    rows = api_get(sock_path, "/v1/usage")
    return next((w["used"] for row in rows for w in row["windows"] if w["window"] == "7d"), -1)


def wait_for(sock_path: Path, want: float, start: float, timeout: float, every: float = 0.005) -> float:
    """Seconds since `start` (a perf_counter) until the 7-day window shows `want`, polled `every` seconds (each
    poll costs the daemon a request: the first ingestion, seconds long, is polled less often)."""
    seen = -1.0
    while time.perf_counter() - start < timeout:
        seen = used(sock_path)
        if seen == want:
            return time.perf_counter() - start
        time.sleep(every)
    raise SystemExit(f"fleetd shows {seen:.0f} tokens after {timeout:.0f} s, expected {want:.0f}")


@dataclass
class FleetdRun:
    first_s: float
    appends_ms: list[float]
    rss_mb: float


def fleetd_run(claude: Path, truth: Truth, appends: int, writer: Writer, timeout: float) -> FleetdRun:
    """A fresh daemon; `profile add` until the window shows the ground truth; appends; RSS after."""
    work = Path(shutil.copytree(claude, Path(os.environ.get("TMPDIR", "/tmp")) / f"flb-cc-{os.getpid()}"))
    daemon = ThrowawayDaemon().start()
    try:
        sock_path = paths.resolve(daemon.env).socket
        pid = api_get(sock_path, "/v1/health")["pid"]
        started = time.perf_counter()
        # `profile add` beats before it answers; with a large backlog that can outlast the CLI's own timeout,
        # which is not what is measured here: the window is polled meanwhile.
        adding = subprocess.Popen([sys.executable, "-m", "fleetd", "profile", "add", "bench", "--backend",
                                   "claude_code", "--config-dir", str(work), "--limit", "7d=900000Mtok"],
                                  env=daemon.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        first = wait_for(sock_path, truth.total, started, timeout, every=0.025)
        adding.wait()
        expected = truth.total
        targets = sorted(work.rglob("*.jsonl"))
        latencies = []
        for i in range(appends):
            before = Truth()
            writer.truth = before
            block = appended_block(writer, MB)
            target = targets[(i * 7919) % len(targets)]
            expected += before.total
            with target.open("ab") as handle:
                began = time.perf_counter()
                handle.write(block)
                handle.flush()
            latencies.append(wait_for(sock_path, expected, began, timeout) * 1000)
            time.sleep(0.3)  # not back to back: each append is its own change
        rss = psutil.Process(pid).memory_info().rss / MB
        return FleetdRun(first, latencies, rss)
    finally:
        daemon.close()
        shutil.rmtree(work, ignore_errors=True)


def appended_block(writer: Writer, size: int) -> bytes:
    """About `size` bytes of new turns (one of them a large tool result) written now."""
    now = datetime.now(UTC) - timedelta(seconds=5)
    session = writer.uid()
    lines = writer.turn(session, "/home/user/src/append", False, now, size - 64 * 1024)
    while sum(map(len, lines)) < size:
        lines += writer.turn(session, "/home/user/src/append", False, now, 4000)
    return b"".join(lines)


# -- ccusage --------------------------------------------------------------------------------------


def ccusage_run(claude: Path) -> tuple[float, dict[str, int]]:
    env = {**os.environ, "CLAUDE_CONFIG_DIR": str(claude), "TZ": "UTC"}
    started = time.perf_counter()
    out = subprocess.run([str(CCUSAGE), "daily", "--offline", "--json"], env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    totals = json.loads(out.stdout)["totals"]
    return elapsed, {
        "input": totals["inputTokens"],
        "output": totals["outputTokens"],
        "cache_read": totals["cacheReadTokens"],
        "cache_write": totals["cacheCreationTokens"],
    }


# -- main -----------------------------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=532, help="MB of transcripts in all (default 532)")
    parser.add_argument("--files", type=int, default=None, help="transcript files (default: 2000 per 532 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh daemons / ccusage runs")
    parser.add_argument("--appends", type=int, default=5, help="1 MB appends per daemon")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    files = args.files or max(1, round(2000 * args.size / 532))
    if args.size <= 0 or files < 1 or args.repeat < 1 or args.appends < 0:
        parser.error("--size must be > 0, --files, --repeat >= 1, --appends >= 0")
    claude, truth, _ = corpus(args.size, files, args.seed)
    count, total_bytes = tree_size(claude)
    print(f"{count} transcripts, {total_bytes / MB:.0f} MB, {truth.messages} messages, {truth.total} tokens",
          file=sys.stderr)  # fmt: skip

    have_ccusage = CCUSAGE.exists()
    cc_times: list[float] = []
    cc_totals: dict[str, int] = {}
    runs: list[FleetdRun] = []
    writer = Writer(args.seed + 1)
    for _ in range(args.repeat):  # interleaved, so that both see the same machine
        if have_ccusage:
            elapsed, cc_totals = ccusage_run(claude)
            cc_times.append(elapsed)
        runs.append(fleetd_run(claude, truth, args.appends, writer, args.timeout))

    cc_ok = cc_totals == truth.tokens if have_ccusage else None
    first = [r.first_s for r in runs]
    appends = [ms for r in runs for ms in r.appends_ms]
    rss = [r.rss_mb for r in runs]
    rows = [
        ("first ingestion, s", spread(first, ".2f"), spread(cc_times, ".2f") if cc_times else "not installed",
         f"{statistics.median(first) / statistics.median(cc_times):.2f}x" if cc_times else "-"),
        ("1 MB appended, ms", spread(appends, ".0f"), "-", "-"),
        ("daemon RSS after, MB", spread(rss, ".1f"), "-", "-"),
    ]  # fmt: skip
    print(f"{count} transcripts, {total_bytes / MB:.0f} MB; ground truth {truth.total} tokens "
          f"({truth.messages} messages); fleetd total matches: yes; ccusage total matches: "
          f"{'yes' if cc_ok else 'NO: ' + json.dumps(cc_totals) if cc_ok is not None else 'not run'}")  # fmt: skip
    print(f"{'figure':<24}{'fleetd':<28}{'ccusage daily --offline':<28}ratio")
    for name, ours, theirs, ratio in rows:
        print(f"{name:<24}{ours:<28}{theirs:<28}{ratio}")
    if args.json:
        args.json.write_text(json.dumps({
            "files": count, "bytes": total_bytes, "messages": truth.messages, "truth": truth.tokens,
            "fleetd_first_s": first, "ccusage_s": cc_times, "ccusage_totals": cc_totals, "ccusage_matches": cc_ok,
            "append_ms": appends, "rss_mb": rss,
        }, indent=2))  # fmt: skip
    return 0 if cc_ok is not False else 1


if __name__ == "__main__":
    sys.exit(main())
