"""``xkslab up``: the three services, each in its own process, on embedded defaults, bootstrapped on first
start, like ``vault server -dev``; and what it prints and writes for users and scripts (``up.json``).

First start on an empty data directory: ``init`` (SQLite, software sealing), a local CA and server
certificates, the key manager's objects (bootstrap.py), then the services, then the KMS side through the
KMS's own API. Later starts reuse all of it. ``up.json`` exists only while the lab is ready: it is
written once everything answers and removed when the lab stops, so scripts may wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xkslab.lab.bootstrap import (
    FIXED_CREDENTIALS,
    AwsCredentials,
    bootstrap_dsm,
    bootstrap_kms,
    set_admin_password,
)
from xkslab.lab.credentials import lab_credentials
from xkslab.lab.datadir import init_data_dir, write_config_if_missing
from xkslab.lab.envfmt import format_env
from xkslab.lab.files import PASSWORD_FILE, UP_FILE, LabError, lab_env
from xkslab.lab.fleet import FleetShape, LabShape, check_fleet, start_fleet
from xkslab.lab.supervisor import Supervisor, hold_data_dir
from xkslab_shared.certs import ensure_kms_client_cert, make_local_ca, make_server_cert
from xkslab_shared.config import Settings, kms_client_subject
from xkslab_shared.logs import announcer

__all__ = ["LabError", "lab_env", "run_up", "up_file"]

ADMIN_EMAIL = "admin@xkslab.local"
CONSOLE_PATH = "/console"  # the web console, served by the DSM (README: Console)


def up_file(settings: Settings) -> Path:
    return settings.data_dir / UP_FILE


def ensure_certificates(settings: Settings) -> Path:
    """The local CA, the DSM and proxy server certificates and the client certificate KMS presents
    (``cks.kms.<region>.amazonaws.com``), each kept when present."""
    tls_dir = settings.data_dir / "tls"
    ca_crt, ca_key = make_local_ca(tls_dir)
    for name in ("dsm", "xks"):
        if not (tls_dir / f"{name}.crt").exists():
            make_server_cert(tls_dir, ca_crt, ca_key, name, ["localhost"])
    ensure_kms_client_cert(tls_dir, ca_crt, ca_key, kms_client_subject(settings.kms.region))
    return ca_crt


def mtls_facts(settings: Settings) -> dict[str, Any] | None:
    """With mTLS on the proxy, what a client of the proxy needs (the files KMS presents, the subject the
    proxy accepts), for up.json and ``xkslab env``; None without mTLS."""
    client_ca = settings.xks_client_ca()
    if client_ca is None:
        return None
    return {
        "client_ca": str(client_ca.absolute()),
        "client_subject": settings.xks_client_subject() or None,
        "client_cert": str(settings.path(settings.kms.xks_client_cert).absolute()),
        "client_key": str(settings.path(settings.kms.xks_client_key).absolute()),
    }


def proxy_target(dsm_urls: list[str]) -> str:
    """Where the lab's proxy reaches its key manager: the framed link when the DSM serves one (dsm.link),
    else its plain HTTP URL."""
    return next((url for url in dsm_urls if url.startswith("link")), dsm_urls[0])


def lab_settings(
    settings: Settings, urls: dict[str, list[str]], facts: dict[str, Any], admin_password: str | None
) -> dict[str, Any]:
    region = settings.kms.region
    kms_url = urls["kms"][0]
    credentials: AwsCredentials = facts.get("aws_credentials", FIXED_CREDENTIALS)
    https = next((u for u in urls["dsm"] if u.startswith("https")), None)
    return {
        "console": {"url": urls["dsm"][0] + CONSOLE_PATH, "https_url": https and https + CONSOLE_PATH},
        "dsm": {
            "url": urls["dsm"][0],
            "https_url": next((u for u in urls["dsm"] if u.startswith("https")), None),
            "link_url": next((u for u in urls["dsm"] if u.startswith("link")), None),
            "admin_email": ADMIN_EMAIL,
            "admin_password": admin_password,
            "api_key": facts["dsm_api_key"],
            "group_id": facts["group_id"],
            "root_kek_id": facts["root_kek_id"],
        },
        "xks": {
            "url": urls["xks"][0],
            "https_url": next((u for u in urls["xks"] if u.startswith("https")), None),
            "uri_path": facts["xks_uri_path"],
            "app_id": facts["xks_app_id"],
            "access_key_id": facts["xks_access_key_id"],
            "secret_access_key": facts["xks_secret_access_key"],
        },
        "kms": {
            "endpoint_url": kms_url,
            "region": region,
            "custom_key_store_id": facts["custom_key_store_id"],
            "key_id": facts["kms_key_id"],
            "key_arn": facts["kms_key_arn"],
            "alias": facts["kms_alias"],
        },
        "ca_file": facts["ca_file"],
        "mtls": mtls_facts(settings),
        "aws_env": {
            "AWS_ENDPOINT_URL_KMS": kms_url,
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
            "AWS_DEFAULT_REGION": region,
        },
    }


def write_up_file(path: Path, data: dict[str, Any]) -> None:
    """0600 (it holds the admin password, an API key and the SigV4 secret of the lab), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_password(settings: Settings) -> str | None:
    """The lab's admin password as the first start made it (0600 file; an older lab kept it in up.json)."""
    path = settings.data_dir / PASSWORD_FILE
    if path.exists():
        return path.read_text().strip() or None
    old = up_file(settings)
    try:
        return json.loads(old.read_text()).get("dsm", {}).get("admin_password") if old.exists() else None
    except ValueError:
        return None


def save_password(settings: Settings, password: str) -> None:
    path = settings.data_dir / PASSWORD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
        fh.flush()
        os.fsync(fh.fileno())  # on first start this is the only copy of the admin password


def render(data: dict[str, Any], path: Path) -> str:
    env = format_env(lab_env(data), "shell")  # what `xkslab env` prints, quoted the same way
    dsm, xks, kms = data["dsm"], data["xks"], data["kms"]
    admin = f"{dsm['admin_email']} / {dsm['admin_password']}" if dsm["admin_password"] else dsm["admin_email"]
    return f"""
xkslab is up. Settings (also in {path}):

  Console           {_console(data)}
  DSM REST API      {dsm["url"]}   {dsm["https_url"] or ""}
    admin           {admin}
    API key         {dsm["api_key"]}
    root KEK        {dsm["root_kek_id"]}
  XKS proxy         {xks["url"]}   {xks["https_url"] or ""}
    URI path        {xks["uri_path"]}
    SigV4 key id    {xks["access_key_id"]}
    SigV4 secret    {xks["secret_access_key"]}
  KMS endpoint      {kms["endpoint_url"]}   (region {kms["region"]})
    key store       {kms["custom_key_store_id"]} (CONNECTED)
    KMS key         {kms["key_id"]}  ({kms["alias"]})
  local CA          {data["ca_file"]}{_mtls_lines(data.get("mtls"))}

{env}

python -c 'import boto3
kms = boto3.client("kms")
print(kms.encrypt(KeyId="{kms["alias"]}", Plaintext=b"hello")["CiphertextBlob"])'

{_fleet_lines(data.get("fleet"))}Ctrl-C stops all three services.
"""


def _console(data: dict[str, Any]) -> str:
    console = data.get("console") or {}
    return f"{console.get('url', '')}   {console.get('https_url') or ''}   (sign in as the admin)"


def _fleet_lines(fleet: dict[str, Any] | None) -> str:
    if not fleet:
        return ""
    nodes = [
        f"  {name:<17} {' '.join(urls)}"
        for tier in ("dsm_nodes", "proxies")
        for name, urls in fleet[tier].items()
    ]
    return f"Fleet behind HAProxy ({fleet['haproxy_config']}):\n" + "\n".join(nodes) + "\n\n"


def _mtls_lines(mtls: dict[str, Any] | None) -> str:
    if not mtls:
        return ""
    subject = mtls["client_subject"] or "any"
    return f"""
  mTLS              the proxy requires a client certificate from {mtls["client_ca"]} (subject {subject})
    KMS presents    {mtls["client_cert"]}  (key {mtls["client_key"]})"""


def prepare(settings: Settings) -> str:
    """The blocking part of a start: config file, certificates; a stale up.json (from a lab that was
    killed) goes, so that its presence means a ready lab."""
    write_config_if_missing(settings.data_dir)
    ca_file = str(ensure_certificates(settings).absolute())
    return ca_file


async def initialize(
    settings: Settings, admin_password: str | None, known: str | None
) -> tuple[str, str | None, dict[str, Any]]:
    """Everything before the services start, shared by ``up`` and the in-process lab: config file,
    certificates, ``init``, the admin password, the key manager's objects, the lab's AWS credentials (an
    access key of its own with kms.verify_sigv4 on, made here, before the KMS starts and caches the
    access keys). Returns the CA file, the admin password (None when unknown) and the key manager's facts
    with ``aws_credentials`` (for bootstrap_kms and lab_settings)."""
    ca_file = await asyncio.to_thread(prepare, settings)
    password = admin_password or known or secrets.token_urlsafe(18)
    init = await init_data_dir(settings, "xkslab", ADMIN_EMAIL, password)
    if init["created"]:  # kept at once: a start that fails later must not lose the password
        await asyncio.to_thread(save_password, settings, password)
    elif admin_password is not None:
        # An existing lab: the password asked for becomes the one that works, and the saved copy follows
        # it, so that admin.password and up.json never show a password the DSM refuses.
        await set_admin_password(settings, admin_password)
        await asyncio.to_thread(save_password, settings, admin_password)
    facts = await bootstrap_dsm(settings)
    facts["aws_credentials"] = await lab_credentials(settings)
    # Initialised by `xkslab init` (not created here, no password asked for, none saved): its password was
    # printed then and is not known here.
    unknown = not init["created"] and admin_password is None and known is None
    return ca_file, None if unknown else password, facts


async def run_up(
    settings: Settings,
    admin_password: str | None,
    echo: Callable[[str], None],
    overrides: dict[str, str] | None = None,
    log_dir: Path | None = None,
    ready: threading.Event | None = None,
    fleet: FleetShape | None = None,
    workers: int = 1,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Start the lab and serve until SIGINT/SIGTERM. ``overrides`` are the command's ``--set`` flags,
    passed on to each service's process; with ``log_dir``, each service logs to <log_dir>/<service>.log;
    ``ready`` is set once the lab is ready (first_start); ``fleet``: several DSM nodes and proxies
    behind HAProxy (fleet.py) instead of one of each; ``workers``: processes per DSM and proxy node;
    ``on_ready`` is then called (in a worker thread) with what up.json holds (``up --open`` opens the
    console)."""
    haproxy = check_fleet(settings) if fleet is not None else None
    shape = LabShape(fleet, haproxy, workers)
    await _run_up_locked(
        settings, admin_password, echo, overrides, log_dir, ready or threading.Event(), shape, on_ready
    )


@contextlib.contextmanager
def first_start(settings: Settings) -> Iterator[threading.Event]:
    """Around the whole of a start, the event loop included (so the certificate files a worker thread
    may still be writing when Ctrl-C cancels the start are written by then): a first start that is not
    set ready (a port in use, Ctrl-C) takes back what it made, so the data directory is as it was; a
    later start keeps everything."""
    before = _before_first_start(settings)
    ready = threading.Event()
    try:
        yield ready
    finally:
        if before is not None and not ready.is_set():
            _take_back(settings.data_dir, before)


def _before_first_start(settings: Settings) -> set[str] | None:
    """What the data directory holds before a first start (an empty set: it does not exist), or None
    when it is not a first start: it has a config file, or its database is not a file inside it."""
    data_dir = settings.data_dir
    if settings.config_file.exists() or not settings.database_url.startswith("sqlite"):
        return None
    return set(os.listdir(data_dir)) if data_dir.is_dir() else set()


def _take_back(data_dir: Path, before: set[str]) -> None:
    if not before:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for name in set(os.listdir(data_dir)) - before:
        path = data_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


async def _run_up_locked(
    settings: Settings,
    admin_password: str | None,
    echo: Callable[[str], None],
    overrides: dict[str, str] | None,
    log_dir: Path | None,
    ready: threading.Event,
    shape: LabShape,
    on_ready: Callable[[dict[str, Any]], None] | None,
) -> None:
    with hold_data_dir(settings.data_dir):
        path = up_file(settings)
        known = read_password(settings)
        path.unlink(missing_ok=True)
        # SIGTERM (`xkslab down`) before the supervisor's own handler is in place: cancel the start, so
        # the services started so far are stopped instead of outliving this process.
        task = asyncio.current_task()
        terminated = asyncio.Event()

        def on_sigterm() -> None:
            terminated.set()
            if task is not None:
                task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            await _run_up(
                settings, admin_password, known, echo, overrides or {}, log_dir, ready, shape, on_ready
            )
        except asyncio.CancelledError:
            if not terminated.is_set():
                raise
            raise LabError("stopped by SIGTERM before the lab was ready") from None
        finally:
            path.unlink(missing_ok=True)


async def _run_up(
    settings: Settings,
    admin_password: str | None,
    known: str | None,
    echo: Callable[[str], None],
    overrides: dict[str, str],
    log_dir: Path | None,
    ready: threading.Event,
    shape: LabShape,
    on_ready: Callable[[dict[str, Any]], None] | None,
) -> None:
    announce = announcer("lab")  # a log line, as the services' own start and stop
    ca_file, password, dsm_facts = await initialize(settings, admin_password, known)
    async with Supervisor(
        settings.data_dir, overrides, echo, log_dir, serve_args=shape.serve_args()
    ) as services:
        # The KMS needs nothing from the others to start, so it starts beside them (each service is a
        # Python process whose imports take most of a second); the proxy needs the key manager's port.
        kms_start = asyncio.create_task(services.start("kms"))
        fleet_facts: dict[str, Any] | None = None
        try:
            if shape.fleet is not None and shape.haproxy is not None:
                urls, fleet_facts = await start_fleet(services, settings, shape.fleet, shape.haproxy)
            else:
                urls = {"dsm": await services.start("dsm")}
                proxy = {"xks.dsm_urls": proxy_target(urls["dsm"])}
                if shape.workers > 1:
                    # The kernel gives each link connection to one DSM worker: enough of them that every
                    # worker gets a share of each proxy worker's calls.
                    links = max(settings.xks.dsm_link_connections, 4 * shape.workers)
                    proxy["xks.dsm_link_connections"] = str(links)
                urls["xks"] = await services.start("xks", proxy)
            urls["kms"] = await kms_start
        except BaseException:
            kms_start.cancel()
            with contextlib.suppress(BaseException):
                await kms_start
            raise
        xks_https = next(u for u in urls["xks"] if u.startswith("https")).replace("127.0.0.1", "localhost")
        kms_facts = await bootstrap_kms(settings, dsm_facts, urls["kms"][0], xks_https)
        data = lab_settings(settings, urls, {**dsm_facts, **kms_facts, "ca_file": ca_file}, password)
        data["pid"] = os.getpid()
        data["ready"] = datetime.now(UTC).isoformat(timespec="seconds")  # when every service answered
        data["service_pids"] = services.pids
        if services.workers:  # `--workers N`: each service's supervisor is in service_pids, its workers here
            data["worker_pids"] = services.workers
        if fleet_facts is not None:
            data["fleet"] = fleet_facts
        path = up_file(settings)
        services.catch_signals()
        await asyncio.to_thread(write_up_file, path, data)
        ready.set()
        echo(render(data, path))
        if on_ready is not None:
            await asyncio.to_thread(on_ready, data)
        nodes = {name for tier in ("dsm_nodes", "proxies") for name in (fleet_facts or {}).get(tier, {})}
        await services.wait(frozenset(nodes))
        announce("stopping")
    announce("stopped")
