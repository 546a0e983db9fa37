"""A paced flood of wrong logins, or of XKS calls with a bad signature, sent by wrk
(scripts/login_flood.py measures the XKS path beside it).

The flooding client shares the machine's cores with the lab, so it must cost little itself: an aiohttp
client sending 1,000 logins a second took a quarter of a core on the 2-core machines, which the lab
then lacked, and that was counted against the lab. wrk costs a few percent. It paces the flood with
LuaJIT's FFI clock: each wrk thread keeps a schedule of one request every ``threads / rate`` seconds and
``delay()`` holds each connection's next request until its slot. Slots missed while the connections
waited on the server are sent as soon as they are free again, so the average rate is the one asked for
as long as the connections keep up (the figure reported is the one measured).
"""

from __future__ import annotations

import base64
import json
import os
import string
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkslab.bench.wrk import LUA_MONOTONIC_MS, Request, lua_string, wrk_binary
from xkslab_shared.xks_wire import ERROR_STATUS

AUTH_PATH = "/sys/v1/session/auth"
# What the flood sends: logins to the DSM's login endpoint with Basic credentials, or XKS calls to the
# proxy (the kinds in XKS_KINDS, whose requests are made beforehand and given in Flood.requests):
KINDS = {
    "wrong-key": "one app's id with a new wrong API key each time",
    "password": "the administrator's email with a wrong password",
    "app-spray": "a new made-up app id each time",
    "user-spray": "a new made-up email each time (each one would cost a password hash)",
    "bad-signature": "XKS Encrypt calls of the lab's app signed with a wrong secret (a signature mismatch)",
}
XKS_KINDS = frozenset({"bad-signature"})

_LUA = string.Template(
    LUA_MONOTONIC_MS
    + r"""
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for k = 3, 0, -1 do
      local v = math.floor(n / 64 ^ k) % 64
      chars[#chars + 1] = B64:sub(v + 1, v + 1)
    end
    if not b then chars[3], chars[4] = "=", "=" elseif not c then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

local KIND, IDENTITY, INTERVAL_MS, POOL = $kind, $identity, $interval_ms, $pool
local GIVEN = $given  -- prepared requests {path, headers, body}, for the XKS kinds
-- thread_id is set by setup(): a global of each thread's Lua state.
thread_id = 0
local pool, i, next_slot = {}, 0, nil

local threads = {}
setup = function(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

-- Formatted once, so that sending costs wrk no Lua work beyond picking the next one.
init = function(args)
  if #GIVEN > 0 then
    for n, r in ipairs(GIVEN) do pool[n] = wrk.format("POST", r[1], r[2], r[3]) end
    POOL = #GIVEN
    return
  end
  for n = 1, POOL do
    local user
    if KIND == "app-spray" then
      user = string.format("%08x-0000-4000-8000-%012x", thread_id, n)
    elseif KIND == "user-spray" then
      user = string.format("nobody-%d-%d@example.com", thread_id, n)
    else
      user = IDENTITY
    end
    local auth = "Basic " .. b64(user .. ":wrong-" .. n)
    pool[n] = wrk.format("POST", $path, {["Authorization"] = auth}, "")
  end
end

request = function()
  i = i % POOL + 1
  return pool[i]
end

delay = function()
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  next_slot = next_slot + INTERVAL_MS
  return math.max(0, next_slot - now)
end

done = function(summary, latency, requests)
  io.stderr:write(string.format('{"requests":%d,"duration_us":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""
)


def _lua(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


@dataclass(frozen=True)
class Flood:
    kind: str
    identity: str  # the app id ("wrong-key") or email ("password") the flood names; unused by sprays
    rate: float  # logins per second, over all threads
    duration_s: float
    connections: int = 32
    threads: int = 1
    # The requests an XKS kind sends, in turn (made and signed beforehand: wrk only sends them).
    requests: tuple[Request, ...] = ()


def script(flood: Flood) -> str:
    if flood.kind not in KINDS:
        raise ValueError(f"unknown flood kind {flood.kind!r}: one of {', '.join(KINDS)}")
    if (flood.kind in XKS_KINDS) != bool(flood.requests):
        raise ValueError(f"flood kind {flood.kind!r}: requests are given for the XKS kinds, and only them")
    given = ",\n".join(
        f"  {{{lua_string(r.path)}, {{"
        + ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in r.headers.items())
        + f"}}, {lua_string(r.body)}}}"
        for r in flood.requests
    )
    return _LUA.substitute(
        given="{\n" + given + "\n}",
        kind=_lua(flood.kind),
        identity=_lua(flood.identity),
        interval_ms=repr(1000.0 * flood.threads / flood.rate),
        # Sprays: a new identity per login for the whole run, at most 5 of a thread's per 20 s.
        pool=str(20_000 if flood.kind.endswith("spray") else 1_000),
        path=_lua(AUTH_PATH),
    )


class FloodProcess:
    """wrk flooding ``base_url`` in the background; ``result()`` waits for it and returns what it sent
    and at what rate. What the DSM answered is read from its own metrics (login_statuses), so wrk runs
    no Lua per response."""

    def __init__(self, base_url: str, flood: Flood) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="xkslab-flood-")
        path = Path(self._tmp.name) / "flood.lua"
        path.write_text(script(flood))
        self.flood = flood
        self._process = subprocess.Popen(
            [
                wrk_binary(),
                f"-t{flood.threads}",
                f"-c{max(flood.connections, flood.threads)}",
                f"-d{max(1, round(flood.duration_s))}s",
                "--timeout=10s",
                "-s",
                str(path),
                base_url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def result(self) -> dict[str, Any]:
        assert self._process.stderr is not None
        try:
            # wrk ends itself after its duration (-d); reaped here with wait4 for its own CPU time, so
            # that what the flooding client costs the shared cores is reported beside what it sent.
            # (A wrk that outlives its duration by a minute is killed, as communicate's timeout did.)
            guard = threading.Timer(self.flood.duration_s + 60, self._process.kill)
            guard.start()
            try:
                err = self._process.stderr.read()
                _, status, usage = os.wait4(self._process.pid, 0)
            finally:
                guard.cancel()
            self._process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            self._tmp.cleanup()
        lines = [line for line in err.splitlines() if line.startswith("{")]
        if self._process.returncode != 0 or not lines:
            raise RuntimeError(f"the flood's wrk failed ({self._process.returncode}): {err.strip()[:300]}")
        raw = json.loads(lines[-1])
        seconds = raw["duration_us"] / 1e6
        return {
            "kind": self.flood.kind,
            "sent": raw["requests"],
            "per_s": round(raw["requests"] / seconds, 1) if seconds else 0.0,
            "socket_errors": raw["socket_errors"],
            "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        }


def app_id_of(api_key: str) -> str:
    """The app id in a DSM API key (Base64 of ``app_id:secret``)."""
    return base64.b64decode(api_key).decode().split(":", 1)[0]


def login_statuses(dsm_url: str) -> dict[str, int]:
    """The DSM's count of login answers so far, by status (from its Prometheus ``/metrics``)."""
    import urllib.request

    with urllib.request.urlopen(dsm_url + "/metrics", timeout=30) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("dsm_requests_total{") and f'route="{AUTH_PATH}"' in line:
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0) + int(float(value))
    return counts


# In xks_errors' counts: the requests whose client left before the proxy read them (no answer was sent).
CLIENT_GONE = "client-gone"


def xks_errors(xks_url: str) -> dict[str, int]:
    """The proxy's count of refused XKS requests so far, by XKS errorName, and of those whose client left
    before they were read, as CLIENT_GONE (from its ``/metrics``)."""
    import urllib.request

    with urllib.request.urlopen(xks_url + "/metrics", timeout=30) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("xks_proxy_requests_total{") and 'outcome="success"' not in line:
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0) + int(float(value))
        elif line.startswith("xks_proxy_client_gone_total{"):
            counts[CLIENT_GONE] = counts.get(CLIENT_GONE, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def by_status(errors: dict[str, int]) -> dict[str, int]:
    """Counts by XKS errorName -> counts by HTTP status (the spec's table): the answers, so not
    CLIENT_GONE (no answer was sent)."""
    counts: dict[str, int] = {}
    for name, n in errors.items():
        if name == CLIENT_GONE:
            continue
        status = str(ERROR_STATUS.get(name, 500))
        counts[status] = counts.get(status, 0) + n
    return counts


def xks_refusals(xks_url: str) -> dict[str, int]:
    """The proxy's count of refused XKS requests so far, by HTTP status."""
    return by_status(xks_errors(xks_url))


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}
