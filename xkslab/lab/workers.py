"""``xkslab dsm serve --workers N``, ``xkslab xks serve --workers N`` and ``xkslab kms serve --workers N``:
N processes of one service on one port, each a node of its own.

The command becomes a small supervisor (the lab's Supervisor) of N ``serve`` children. Each listens with
SO_REUSEPORT (``http.reuse_port``) on the same ports, so the kernel spreads connections over them: the
first child binds the ports asked for (0: free ones) and the others the ports it bound. Each is a node
with a name of its own, ``<node id>-w<i>`` (``audit.node_id`` for the DSM: so each writes its own audit
chain, which two processes on one chain would contend for at every batch; ``xks.node_id`` for the
proxy), in the node registry like any other. The supervisor's ready file has the URLs and the workers'
pids; SIGINT or SIGTERM stops them all; a worker that dies is told and the others go on.

What they share (README, Deployment): everything in the database (the proxy's fault book and the DSM's
failed-login counts included), and /metrics: the supervisor makes a directory for prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, xkslab_shared/metrics_mp.py) and removes it at the end.

The KMS emulator has no node registry row: each worker is told the number of workers at start
(``XKSLAB_WORKER_COUNT``) and takes that share of each store's quota, and only the first runs the
periodic KmsHealthCheck (the others get ``kms.xks_health_check_s=0``), as KMS checks a proxy once per
interval however many hosts serve it. Its store-failure count is in the database
(kms_emulator/store_health.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from xkslab.lab.supervisor import Supervisor
from xkslab_shared import parent
from xkslab_shared.config import Settings
from xkslab_shared.metrics_mp import MULTIPROC_ENV
from xkslab_shared.serve import write_ready_file
from xkslab_shared.workers_env import WORKER_COUNT_ENV

# Set by the supervisor on its workers (its own pid): a worker does not take the service's lock, which its
# supervisor holds for all of them.
WORKER_OF_ENV = "XKSLAB_WORKER_OF"
MAX_WORKERS = 64

_NODE_SETTING = {"dsm": "audit.node_id", "xks": "xks.node_id"}  # the KMS emulator is no node
_PORT_SETTINGS = {
    "dsm": ("dsm.port", "dsm.https_port"),
    "xks": ("xks.port", "xks.https_port"),
    "kms": ("kms.port", None),
}


def is_worker() -> bool:
    """Whether this process is a worker of a ``serve --workers`` supervisor that is its parent."""
    return os.environ.get(WORKER_OF_ENV) == str(os.getppid())


def _node_id(settings: Settings, service: str) -> str:
    return {"dsm": settings.audit.node_id, "xks": settings.xks.node_id}.get(service, service)


def _link(settings: Settings) -> str:
    """The DSM workers' framed link: one Unix socket cannot be shared the way SO_REUSEPORT shares a port,
    so a link asked for on a socket (the default) is served on a TCP port of the loopback interface,
    shared by every worker; a TCP link stays where it was asked for, and no link stays none."""
    link = settings.dsm.link.strip()
    return link if not link or link.startswith("tcp:") else "tcp:127.0.0.1:0"


def _ports(urls: list[str], service: str) -> dict[str, str]:
    """The port settings that make a worker listen where the first one does."""
    http_setting, https_setting = _PORT_SETTINGS[service]
    ports: dict[str, str] = {}
    for url in urls:
        if url.startswith("link://"):
            ports["dsm.link"] = "tcp:" + url.removeprefix("link://")
            continue
        if not url.startswith(("http://", "https://")):
            continue
        port = url.rsplit(":", 1)[1]
        setting = https_setting if url.startswith("https://") else http_setting
        if setting is not None:
            ports[setting] = port
    return ports


async def serve_workers(
    settings: Settings,
    service: str,
    overrides: dict[str, str],
    workers: int,
    ready_file: Path | None,
    echo: Callable[[str], None],
) -> None:
    """Start ``workers`` processes of ``service`` on shared ports and supervise them until SIGINT or
    SIGTERM (or until every one has exited: LabError)."""
    parent.die_with_parent()  # under `up`, the workers go when up goes, even killed
    metrics_dir = tempfile.mkdtemp(prefix=f"xkslab-{service}-metrics-")
    env = {WORKER_OF_ENV: str(os.getpid()), MULTIPROC_ENV: metrics_dir, WORKER_COUNT_ENV: str(workers)}
    try:
        await _supervise(settings, service, overrides, workers, ready_file, echo, env)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    echo("stopped")


async def _supervise(
    settings: Settings,
    service: str,
    overrides: dict[str, str],
    workers: int,
    ready_file: Path | None,
    echo: Callable[[str], None],
    env: dict[str, str],
) -> None:
    base = _node_id(settings, service)
    async with Supervisor(settings.data_dir, overrides, echo, env=env) as children:
        urls: list[str] = []
        names = [f"{service}.w{index}" for index in range(1, workers + 1)]
        for index, name in enumerate(names, 1):
            extra = {"http.reuse_port": "true"}
            if service in _NODE_SETTING:
                extra[_NODE_SETTING[service]] = f"{base}-w{index}"
            if service == "dsm":
                extra["dsm.link"] = _link(settings)
            if service == "kms" and index > 1:
                extra["kms.xks_health_check_s"] = "0"
            if urls:
                extra.update(_ports(urls, service))
            bound = await children.start(service, extra, name=name)
            urls = urls or bound
        pids = children.pids
        listed = ", ".join(str(pids[n]) for n in names)
        echo(f"{workers} workers listening on {', '.join(urls)} (pids {listed})")
        children.catch_signals()
        if ready_file is not None:
            write_ready_file(
                ready_file, {"pid": os.getpid(), "urls": urls, "workers": [pids[n] for n in names]}
            )
        await children.wait(frozenset(names))
        echo("stopping")
