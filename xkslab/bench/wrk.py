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
    # Requests/s offered in total (0: as fast as the connections go). A fixed rate compares two set-ups
    # at the same served rate, where CPU per request does not also move with the rate (fixed per-second
    # costs spread over fewer requests, smaller group commits).
    rate: float = 0.0


# How far behind its schedule a paced thread may fall and still catch up: a short stall of a loaded
# machine costs no request, a long one does not come back as a burst.
PACE_MAX_LAG_MS = 100.0


def pace_interval_ms(rate: float, threads: int) -> float:
    """The time between two sends of one wrk thread for ``rate`` requests/s over ``threads`` threads."""
    if rate <= 0 or threads < 1:
        raise ValueError("a paced run needs a positive rate and at least one thread")
    return 1000.0 * threads / rate


def next_send(due: float | None, now: float, interval: float) -> tuple[float, float]:
    """One paced send (times in ms): how long to wait before it, and when the next one is due. The Lua
    ``delay()`` of a paced script does exactly this per wrk thread (kept beside it, tested here)."""
    if due is None or due < now - PACE_MAX_LAG_MS:
        due = now
    return max(0.0, due - now), due + interval


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


# now_ms(), the monotonic clock in milliseconds, for the wrk scripts that pace or time (no "%" or "$"
# in it: it is spliced into %-formatted and string.Template scripts alike).
LUA_MONOTONIC_MS = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } xkslab_timespec;
int clock_gettime(int clk_id, xkslab_timespec *tp);
]]
local clock = ffi.new("xkslab_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
"""

PACE = (
    LUA_MONOTONIC_MS
    + """local interval = %r
local max_lag = %r
local due = nil
-- wrk asks delay() before each request of the thread; the schedule is absolute, so whole-ms waits
-- jitter one request without changing the rate (next_send in wrk.py).
delay = function()
  local now = now_ms()
  if due == nil or due < now - max_lag then due = now end
  local wait = due - now
  due = due + interval
  if wait > 0 then return math.floor(wait) end
  return 0
end
"""
)


def lua_script(pool: list[Request], interval_ms: float = 0.0) -> str:
    """A wrk script that cycles through ``pool``; each thread starts at a different place in it. With
    ``interval_ms`` each thread sends one request every ``interval_ms`` (pace_interval_ms)."""
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
        + (PACE % (interval_ms, PACE_MAX_LAG_MS) if interval_ms > 0 else "")
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
        interval = pace_interval_ms(settings.rate, settings.threads) if settings.rate > 0 else 0.0
        script.write_text(lua_script(pool, interval))
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
