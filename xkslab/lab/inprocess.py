"""The lab in the caller's process: the same first start as ``xkslab up`` (init, certificates, bootstrap)
and the same three services, but on the running event loop instead of in child processes, on free ports,
without signal handlers (the caller owns the process). For test suites that want a lab without paying
for three interpreters, or that want to step through a service in a debugger.

``run_lab`` is the async context manager; ``lab_in_thread`` runs it on an event loop of its own in a
background thread, for synchronous code (blocking clients such as boto3 must not share a loop with the
servers they call).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from dsm_emulator.api.app import listener as dsm_listener
from kms_emulator.app import listener as kms_listener
from xks_frontend.app import listener as xks_listener
from xkslab.lab.bootstrap import bootstrap_kms
from xkslab.lab.files import LabError
from xkslab.lab.info import FREE_PORTS, START_TIMEOUT_S, STOP_TIMEOUT_S, LabInfo
from xkslab.lab.supervisor import hold_data_dir, hold_service
from xkslab.lab.up import (
    initialize,
    lab_settings,
    proxy_target,
    read_password,
    up_file,
    write_up_file,
)
from xkslab_shared.config import load_settings
from xkslab_shared.logs import announcer
from xkslab_shared.serve import start

__all__ = ["FREE_PORTS", "LabInfo", "lab_in_thread", "run_lab"]


@contextlib.asynccontextmanager
async def run_lab(
    data_dir: Path | str,
    settings_overrides: Mapping[str, str] | None = None,
    *,
    admin_password: str | None = None,
) -> AsyncIterator[LabInfo]:
    """Start the lab on the running loop and stop it on exit. Every port is a free one unless
    ``settings_overrides`` (``--set`` names and values) says otherwise. ``up.json`` is written while the
    lab is ready, as ``xkslab up`` does, so ``xkslab demo --data-dir`` works against it."""
    settings = load_settings(Path(data_dir), {**FREE_PORTS, **(settings_overrides or {})})
    with hold_data_dir(settings.data_dir):
        path = up_file(settings)
        known = read_password(settings)
        path.unlink(missing_ok=True)
        try:
            ca_file, password, dsm_facts = await initialize(settings, admin_password, known)
            async with contextlib.AsyncExitStack() as stack:
                embedded = settings.database_url.startswith("sqlite")
                for service in ("dsm", "xks", "kms"):  # as `up`'s service processes hold them
                    stack.enter_context(hold_service(settings.data_dir, service, embedded=embedded))
                urls = {"dsm": await start(stack, dsm_listener(settings), announcer("dsm"))}
                # As `up` does: the proxy talks to this lab's key manager, on whatever port it got.
                to_dsm = replace(settings, xks=replace(settings.xks, dsm_urls=proxy_target(urls["dsm"])))
                urls["xks"] = await start(stack, xks_listener(to_dsm), announcer("xks"))
                urls["kms"] = await start(stack, kms_listener(settings), announcer("kms"))
                xks_https = next(u for u in urls["xks"] if u.startswith("https"))
                kms_facts = await bootstrap_kms(
                    settings, dsm_facts, urls["kms"][0], xks_https.replace("127.0.0.1", "localhost")
                )
                data = lab_settings(settings, urls, {**dsm_facts, **kms_facts, "ca_file": ca_file}, password)
                data["pid"] = os.getpid()
                data["service_pids"] = {service: os.getpid() for service in ("dsm", "xks", "kms")}
                await asyncio.to_thread(write_up_file, path, data)
                yield LabInfo(settings.data_dir, settings, data, in_process=True)
        finally:
            path.unlink(missing_ok=True)


class _LabThread(threading.Thread):
    """``run_lab`` on a loop of its own; stopped by cancelling its task, which runs the lab's clean-up
    whether it was still starting or already serving."""

    def __init__(self, data_dir: Path, overrides: Mapping[str, str], admin_password: str | None) -> None:
        # A daemon: a lab that hangs in its clean-up must not keep the interpreter alive at exit.
        super().__init__(name=f"xkslab-lab {data_dir}", daemon=True)
        self._args = (data_dir, overrides, admin_password)
        self.ready: concurrent.futures.Future[LabInfo] = concurrent.futures.Future()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # handed to the caller's thread, which reports it
            if not self.ready.done():
                self.ready.set_exception(exc)
            else:
                self.error = exc

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        data_dir, overrides, admin_password = self._args
        async with run_lab(data_dir, overrides, admin_password=admin_password) as info:
            self.ready.set_result(info)
            await asyncio.Event().wait()  # until stop() cancels this task

    def stop(self, timeout: float) -> None:
        self._started.wait(timeout)
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already: nothing left to stop
                self._loop.call_soon_threadsafe(self._task.cancel)
        self.join(timeout)
        if self.is_alive():
            raise LabError(f"the in-process lab did not stop within {timeout:g} s")


@contextlib.contextmanager
def lab_in_thread(
    data_dir: Path | str,
    settings_overrides: Mapping[str, str] | None = None,
    *,
    admin_password: str | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[LabInfo]:
    """``run_lab`` for synchronous callers: the lab runs on its own event loop in a background thread
    while the block runs; on exit the services stop and the thread ends."""
    thread = _LabThread(Path(data_dir), dict(settings_overrides or {}), admin_password)
    thread.start()
    try:
        try:
            info = thread.ready.result(timeout)
        except concurrent.futures.TimeoutError:
            raise LabError(f"the in-process lab did not start within {timeout:g} s") from None
        yield info
    finally:
        thread.stop(STOP_TIMEOUT_S)
    if thread.error is not None:
        raise LabError(f"the in-process lab failed while stopping: {thread.error!r}") from thread.error
