"""``xkslab up --fleet DSM_NODES,PROXIES``: several DSM nodes and XKS proxies on one PostgreSQL database,
behind HAProxy (Debian's, not a balancer of our own), as Fortanix and AWS run them.

Each node is an ``xkslab dsm serve`` / ``xks serve`` process on free ports with a node id of its own
(``dsm-1``…: its audit chain; ``xks-1``…); the proxies know every DSM node (``xks.dsm_urls``: calls spread
over them, fail-over within one deadline, and one ``ekmFleetDetails`` entry per node in their health
answer). HAProxy listens
where the lab's services would (``dsm.port``, ``dsm.https_port``, ``xks.port``, ``xks.https_port``):
plain HTTP balanced per request (health check ``GET /sys/v1/health`` on the DSM, ``GET /ping`` on the
proxies), HTTPS passed through as TCP, so each node terminates TLS itself and a proxy still sees the
client certificate (mTLS). ``up`` binds those sockets itself and hands them to HAProxy (``bind fd@N``),
so a port of 0 works and the ports really bound are known. The KMS points at the proxies' balancer.

Every tier is balanced round robin: nothing a client observes lives in one node's memory (the account a
user session selected is in the database, as are revocations; caches follow the cache generation).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from xkslab.lab.files import LabError
from xkslab.lab.supervisor import READY_TIMEOUT_S, Supervisor
from xkslab_shared.config import Settings
from xkslab_shared.ports import ListenError

HAPROXY_CONFIG = "haproxy.cfg"
# Debian's package puts it in /usr/sbin, which is not on every user's PATH.
HAPROXY_PATHS = ("haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
MAX_NODES = 10  # the XKS spec's limit on ekmFleetDetails, and plenty for one machine


@dataclass(frozen=True)
class FleetShape:
    dsm_nodes: int
    proxies: int


@dataclass(frozen=True)
class LabShape:
    """What ``up`` starts besides one process per service: a fleet behind HAProxy (with the HAProxy
    binary), and the workers of each DSM, proxy and KMS process (``--workers``)."""

    fleet: FleetShape | None = None
    haproxy: str | None = None
    workers: int = 1

    def serve_args(self) -> dict[str, list[str]]:
        if self.workers <= 1:
            return {}
        return {service: ["--workers", str(self.workers)] for service in ("dsm", "xks", "kms")}


def parse_shape(text: str) -> FleetShape:
    """``DSM_NODES,PROXIES``, each 1 to MAX_NODES."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise LabError(f"--fleet must be DSM_NODES,PROXIES (two numbers, e.g. 2,2), got {text!r}")
    dsm, proxies = int(parts[0]), int(parts[1])
    if not (1 <= dsm <= MAX_NODES and 1 <= proxies <= MAX_NODES):
        raise LabError(f"--fleet: each count must be 1 to {MAX_NODES}, got {text!r}")
    return FleetShape(dsm, proxies)


def haproxy_binary() -> str:
    for candidate in HAPROXY_PATHS:
        found = shutil.which(candidate)
        if found is not None:
            return found
    raise LabError("--fleet needs HAProxy: install it (apt-get install haproxy)")


def check_fleet(settings: Settings) -> str:
    """The HAProxy binary, once the settings allow a fleet; LabError (one line) otherwise."""
    if not settings.database.url.startswith("postgresql"):
        raise LabError(
            "--fleet needs database.url on PostgreSQL (the nodes share one database): set database.url "
            "or XKSLAB_DATABASE_URL to postgresql+asyncpg://..."
        )
    return haproxy_binary()


@dataclass
class Balancer:
    """One listening socket HAProxy serves: the tier, the scheme, and the port really bound."""

    tier: str  # "dsm" | "xks"
    scheme: str  # "http" | "https"
    sock: socket.socket

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def url(self, host: str) -> str:
        return f"{self.scheme}://{host}:{self.port}"


def bind_balancers(settings: Settings) -> list[Balancer]:
    """The four sockets HAProxy will serve, bound and listening here (so a port of 0 is a free port and
    its number is known); a port in use is named by its setting."""
    wanted = [
        ("dsm", "http", settings.dsm.host, settings.dsm.port, "dsm.port"),
        ("dsm", "https", settings.dsm.host, settings.dsm.https_port, "dsm.https_port"),
        ("xks", "http", settings.xks.host, settings.xks.port, "xks.port"),
        ("xks", "https", settings.xks.host, settings.xks.https_port, "xks.https_port"),
    ]
    bound: list[Balancer] = []
    try:
        for tier, scheme, host, port, setting in wanted:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise LabError(str(ListenError.of(exc, host, port, setting))) from None
            sock.listen(1024)
            sock.set_inheritable(True)
            bound.append(Balancer(tier, scheme, sock))
    except BaseException:
        for balancer in bound:
            balancer.sock.close()
        raise
    return bound


@dataclass(frozen=True)
class Member:
    """A node as HAProxy sees it: its name and its plain-HTTP and HTTPS addresses."""

    name: str
    http: str  # host:port
    https: str | None


def member(name: str, urls: list[str]) -> Member:
    def address(scheme: str) -> str | None:
        url = next((u for u in urls if u.startswith(f"{scheme}://")), None)
        return None if url is None else url.split("://", 1)[1]

    http = address("http")
    if http is None:
        raise LabError(f"node {name} serves no plain-HTTP URL for HAProxy's health checks")
    return Member(name, http, address("https"))


_CHECKS = {"dsm": ("GET /sys/v1/health", "204"), "xks": ("GET /ping", "200")}


def haproxy_config(balancers: list[Balancer], members: dict[str, list[Member]]) -> str:
    """HAProxy's configuration: per tier an HTTP frontend (balanced per request) and an HTTPS one
    (TCP pass-through), each on a socket inherited from ``up`` (fd@N); every node health-checked on its
    plain-HTTP port every 500 ms (down after 2 failures, up after 1 success); a request whose node
    refused the connection is sent to another one (retries, redispatch)."""
    lines = [
        "# Written by xkslab up --fleet; rewritten at every start.",
        "global",
        "    maxconn 8192",
        "",
        "defaults",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout check 2s",
        "    retries 2",
        "    option redispatch",
        "    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 1",
    ]
    for balancer in balancers:
        tier, scheme = balancer.tier, balancer.scheme
        name = f"{tier}_{scheme}"
        mode = "http" if scheme == "http" else "tcp"
        check, status = _CHECKS[tier]
        lines += [
            "",
            f"frontend {name}",
            f"    mode {mode}",
            f"    bind fd@{balancer.sock.fileno()}",
            f"    default_backend {name}",
            "",
            f"backend {name}",
            f"    mode {mode}",
            "    balance roundrobin",
            f"    option httpchk {check}",
            f"    http-check expect status {status}",
        ]
        for node in members[tier]:
            if scheme == "http":
                lines.append(f"    server {node.name} {node.http} check")
            elif node.https is not None:
                port = node.http.rsplit(":", 1)[1]
                lines.append(f"    server {node.name} {node.https} check port {port}")
    return "\n".join(lines) + "\n"


def write_config(data_dir: Path, text: str) -> Path:
    path = data_dir / HAPROXY_CONFIG
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


async def start_fleet(
    services: Supervisor, settings: Settings, shape: FleetShape, haproxy: str
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The DSM nodes, then the proxies (which need the nodes' URLs), then HAProxy in front of both
    tiers; returns the balancers' URLs per tier (what the lab's clients use) and the fleet's facts for
    up.json. Every process is the Supervisor's: ``stop`` (and ``xkslab down``) stops them all."""
    balancers = bind_balancers(settings)
    try:
        nodes: dict[str, dict[str, list[str]]] = {"dsm": {}, "xks": {}}
        for index in range(1, shape.dsm_nodes + 1):
            name = f"dsm-{index}"
            # No framed link: the nodes share the data directory, and a proxy reaches each over HTTP.
            extra = {"dsm.port": "0", "dsm.https_port": "0", "audit.node_id": name, "dsm.link": ""}
            nodes["dsm"][name] = await services.start("dsm", extra, name=name)
        dsm_urls = ",".join(urls[0] for urls in nodes["dsm"].values())
        for index in range(1, shape.proxies + 1):
            name = f"xks-{index}"
            extra = {"xks.port": "0", "xks.https_port": "0", "xks.node_id": name, "xks.dsm_urls": dsm_urls}
            nodes["xks"][name] = await services.start("xks", extra, name=name)
        members = {
            tier: [member(name, urls) for name, urls in found.items()] for tier, found in nodes.items()
        }
        config = write_config(settings.data_dir, haproxy_config(balancers, members))
        fds = tuple(balancer.sock.fileno() for balancer in balancers)
        await services.start_program("haproxy", [haproxy, "-db", "-f", str(config)], pass_fds=fds)
        urls = {
            tier: [
                b.url(settings.dsm.host if tier == "dsm" else settings.xks.host)
                for b in balancers
                if b.tier == tier
            ]
            for tier in ("dsm", "xks")
        }
        await _wait_balanced(services, urls)
    finally:
        for balancer in balancers:  # HAProxy has its own copies now (or never started)
            balancer.sock.close()
    facts = {"dsm_nodes": nodes["dsm"], "proxies": nodes["xks"], "haproxy_config": str(config)}
    return urls, facts


async def _wait_balanced(services: Supervisor, urls: dict[str, list[str]]) -> None:
    """Until HAProxy answers on both tiers' plain-HTTP balancers with a node behind each."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    checks = {"dsm": urls["dsm"][0] + "/sys/v1/health", "xks": urls["xks"][0] + "/ping"}
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for tier, url in checks.items():
            while True:
                services.raise_if_exited()
                try:
                    async with session.get(url) as response:
                        if response.status < 300:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if loop.time() > deadline:
                    raise LabError(f"HAProxy did not balance the {tier} tier within {READY_TIMEOUT_S:g} s")
                await asyncio.sleep(0.1)
