"""The fleet scenario of the benchmark (issue 23): ``xkslab up --fleet 2,2`` on a scratch PostgreSQL
database (two DSM nodes, two proxies, HAProxy in front of each tier, the KMS), driven with XKS Encrypt
through the proxies' HAProxy, beside a ceiling of the same shape measured in the same run: HAProxy in
front of two forwarding aiohttp processes, each spreading its calls in turn over two answering ones
(the two-hop chain, twice, behind the same balancer).

It needs HAProxy and a PostgreSQL server (``--postgres-dsn``): without either, the scenario is skipped
with the reason, and the rest of the run goes on."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xkslab.bench import FLEET_SCENARIOS, wrk
from xkslab.bench.lab import Anchor, BenchError, Lab

__all__ = ["FLEET_SCENARIOS", "run_fleet"]
FLEET_SHAPE = "2,2"
FLEET_CEILING = "fleet-two-hop"
# Debian's package puts it in /usr/sbin, which is not on every user's PATH (as `up --fleet` looks).
HAPROXY_PATHS = ("haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy")


def haproxy_binary() -> str:
    for candidate in HAPROXY_PATHS:
        found = shutil.which(candidate)
        if found is not None:
            return found
    raise BenchError("no HAProxy (apt-get install haproxy)")


def ceiling_config(fd: int, fronts: list[int]) -> str:
    """HAProxy as ``up --fleet`` runs it for the proxies' tier (plain HTTP balanced per request, round
    robin, the same timeouts), without the health checks."""
    lines = [
        "global",
        "    maxconn 8192",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "frontend ceiling",
        f"    bind fd@{fd}",
        "    default_backend fronts",
        "backend fronts",
        "    balance roundrobin",
        *(f"    server front-{i} 127.0.0.1:{port}" for i, port in enumerate(fronts, 1)),
    ]
    return "\n".join(lines) + "\n"


class FleetCeiling(Anchor):
    """Two leaves, two forwarders each spreading over both leaves, HAProxy in front of the forwarders."""

    def __init__(self, haproxy: str, work: Path) -> None:
        super().__init__(FLEET_CEILING)
        self.haproxy = haproxy
        self.config = work / "ceiling-haproxy.cfg"
        self.balancer: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FleetCeiling:
        try:
            leaves = [f"http://127.0.0.1:{self._start('leaf')}/" for _ in range(2)]
            fronts = [self._start("forward", ",".join(leaves)) for _ in range(2)]
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                sock.listen(1024)
                sock.set_inheritable(True)
                self.config.write_text(ceiling_config(sock.fileno(), fronts))
                self.balancer = subprocess.Popen(
                    [self.haproxy, "-db", "-f", str(self.config)],
                    pass_fds=(sock.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self.port = int(sock.getsockname()[1])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.balancer is not None:
            self.balancer.terminate()
            self.balancer.wait(timeout=10)
        super().__exit__()


def run_fleet(
    names: list[str],
    postgres_dsn: str | None,
    work: Path,
    measure: Callable[[str, str, Any], dict[str, Any]],
    pool_for: Callable[[str, dict[str, Any]], Any],
    pg: tuple[Callable[[str], tuple[str, str]], Callable[[str, str], None]],
    echo: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], dict[str, str]]:
    """The fleet's scenarios and their ceiling: (results, anchors, memory, skipped)."""
    try:
        haproxy = haproxy_binary()
        if not postgres_dsn:
            raise BenchError("no --postgres-dsn (a fleet shares one PostgreSQL database)")
        create, drop = pg
        db_name, url = create(postgres_dsn)
    except Exception as exc:
        why = str(exc) if isinstance(exc, BenchError) else f"PostgreSQL not reachable: {type(exc).__name__}"
        return [], [], {}, {name: why for name in names}
    results, memory = [], {}
    try:
        echo(f"fleet: xkslab up --fleet {FLEET_SHAPE} on PostgreSQL, behind HAProxy")
        with Lab(work / "fleet", work / "fleet.log", {"database.url": url}, ("--fleet", FLEET_SHAPE)) as lab:
            for name in names:
                url_, pool = pool_for(name.removeprefix("fleet-"), lab.info)
                results.append({**measure(name, url_, pool), "scenario": name})
            memory["lab (fleet)"] = lab.memory()
    finally:
        drop(postgres_dsn, db_name)
    echo("fleet ceiling: HAProxy in front of two two-hop chains")
    request = [
        wrk.Request("/", {"Content-Type": "application/json", "Host": "127.0.0.1"}, b'{"plaintext":"x"}')
    ]
    with FleetCeiling(haproxy, work) as ceiling:
        anchors = [measure(FLEET_CEILING, ceiling.url, request)]
        memory[FLEET_CEILING] = ceiling.memory()
    return results, anchors, memory, {}
