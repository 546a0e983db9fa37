"""A supervised service ends when its supervisor dies, however it dies.

``xkslab up`` starts each service as a child. A SIGKILLed ``up`` runs no clean-up, and its children
used to carry on under PID 1 with their ports open and the data directory's service locks held, so the
next ``up`` was refused. Two mechanisms, because each covers what the other cannot:

- a pipe: the supervisor keeps the write end, each child inherits the read end (its number in
  ``XKSLAB_PARENT_FD``) and watches it from its event loop. Nobody ever writes; when the supervisor
  dies the kernel closes the write end, the read end turns readable at end of file, and the child stops
  as on SIGTERM (cleanly: its audit rows are written, its locks released). Portable, and race-free: a
  supervisor that died before the child started watching still leaves the pipe at end of file.
- on Linux, ``PR_SET_PDEATHSIG`` (SIGTERM): the kernel signals the child when its parent dies, which
  also covers a child that has not reached its event loop yet (still opening its database).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from collections.abc import Callable

PARENT_FD_ENV = "XKSLAB_PARENT_FD"
_PR_SET_PDEATHSIG = 1


class ParentLink:
    """The supervisor's end: the pipe whose read end its children inherit. Keep it open while the
    children run; closing it (or dying) tells them to stop."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()  # both not inheritable: only pass_fds hands one over

    def child_env(self) -> dict[str, str]:
        return {**os.environ, PARENT_FD_ENV: str(self._read)}

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self._read,)

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass


def die_with_parent() -> None:
    """Linux: ask for SIGTERM when the parent dies. Only for a supervised child (``XKSLAB_PARENT_FD``
    set): a service started by hand from a shell must outlive nothing."""
    if PARENT_FD_ENV not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the pipe still does it
        return


def watch_parent(on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` from the running loop once the supervisor's pipe reaches end of file (the
    supervisor exited or was killed). Does nothing when this process was not started by a supervisor."""
    value = os.environ.pop(PARENT_FD_ENV, None)  # not passed on to anything this process starts
    if value is None or not value.isdigit():
        return
    fd = int(value)
    try:
        os.set_blocking(fd, False)
    except OSError:  # not a descriptor this process has: nothing to watch
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:  # nobody writes; ignore anything that does
            return
        loop.remove_reader(fd)
        os.close(fd)
        on_gone()

    loop.add_reader(fd, readable)
