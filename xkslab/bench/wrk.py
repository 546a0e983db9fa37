"""wrk, driven through a generated Lua script: each wrk thread formats a pool of real, pre-signed requests
once and cycles through them, and ``done`` prints the run's figures as one JSON line, so nothing is
scraped from wrk's human-readable summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class WrkSettings:
    duration_s: float = 10.0
    connections: int = 32
    threads: int = 2
    timeout_s: float = 2.0


def lua_string(value: str | bytes) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\' or code < 32 or code > 126:
            out.append(f"\\{code:03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def lua_script(pool: list[Request]) -> str:
    """A wrk script that cycles through ``pool``; each thread starts at a different place in it."""
    items = []
    for r in pool:
        headers = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in r.headers.items())
        items.append(f"  {{{lua_string(r.path)}, {{{headers}}}, {lua_string(r.body)}}},")
    return (
        "local pool = {\n"
        + "\n".join(items)
        + """
}
local formatted = {}
local i = 0
init = function(args)
  for n, r in ipairs(pool) do
    formatted[n] = wrk.format("POST", r[1], r[2], r[3])
  end
  i = math.random(#formatted) - 1
end
request = function()
  i = i % #formatted + 1
  return formatted[i]
end
"""
        + DONE
    )


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install -y wrk)")
    return found


def run(base_url: str, pool: list[Request], settings: WrkSettings) -> dict[str, Any]:
    """Drive ``base_url`` with the pool; returns requests/s, latency percentiles (ms), non-2xx and socket
    errors."""
    with tempfile.TemporaryDirectory(prefix="xkslab-wrk-") as tmp:
        script = Path(tmp) / "pool.lua"
        script.write_text(lua_script(pool))
        command = [
            wrk_binary(),
            f"-t{settings.threads}",
            f"-c{max(settings.connections, settings.threads)}",
            f"-d{max(1, round(settings.duration_s))}s",
            f"--timeout={settings.timeout_s:g}s",
            "-s",
            str(script),
            base_url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=settings.duration_s + 60)
    lines = [line for line in done.stderr.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[:300]}")
    raw = json.loads(lines[-1])
    seconds = raw["duration_us"] / 1e6
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "non2xx": raw["non2xx"],
        "socket_errors": socket_errors,
        "timeouts": raw["timeout"],
    }
