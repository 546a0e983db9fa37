"""The real ``xkslab`` command line, run inside the test process.

A ``python -m xkslab`` process costs about a second of CPU before it does anything (the interpreter and
the imports), and the suite runs thousands of commands, so most tests run the same click entry point
(``xkslab.cli.main``, what ``xkslab/__main__.py`` calls) here instead: same arguments, same parsing,
same one-line errors and exit statuses, stdout and stderr kept apart, the answer shaped like
``subprocess.CompletedProcess`` (``returncode``, ``stdout``, ``stderr``) so that assertions written
for a process hold as they are.

How it stays faithful:

* Each call runs in a fresh worker thread, so it works from inside a running event loop too (the
  commands call ``asyncio.run``), and ``main`` runs with click's standalone mode, as in a process:
  ``SystemExit``/``ctx.exit`` give the exit status, ``ClickException`` the one line on stderr and 1,
  usage errors 2, under the program name ``python -m xkslab`` as click names it in a process.
* ``env`` is applied to ``os.environ`` for the call only (click's ``CliRunner``), and calls are
  serialised by a lock, since ``os.environ``, ``sys.stdin``/``stdout``/``stderr`` are process-wide.
* An exception that would have ended the process with a traceback is exit status 1 with that
  traceback on stderr (``XKSLAB_DEBUG=1`` lets such exceptions through the CLI's own handler).
* What a command may leave behind in the process is put back after each call: handlers and levels of
  the root and the ``alembic`` logger and the logging module's record flags (``xkslab_shared.logs``'s
  ``configure``). The key manager is opened and closed per command (``with_core``: its engine
  disposed), and a PKCS#11 login is shared by refcount and logged out by the last sealer that closes
  (``dsm_emulator.sealing.pkcs11``), so neither outlives a command that ends normally. Warnings
  inside a command obey pytest's filters (errors in this project), which a process would only print.
* The working directory is the test process's (a subprocess here used the repository root): pass
  absolute paths, as ``--data-dir`` always is.

When a separate process is the point, keep ``subprocess``: a writer in another process beside a running
lab (tests/integration/test_cross_process.py, test_crash.py, cli_worker.py: what one process wrote,
another reads; test_keyring_rotation.py and test_kms_sigv4.py's access-key delete: another process's
change reaching a service that runs in the test process), ``up``/``down``/``wait``/``demo`` and the
``serve`` commands of real labs, exit on signals, anything about ``PYTHON*`` variables, the interpreter
or the installed console script, and at least one real ``python -m xkslab`` run per family of tests
(test_cli_errors.py keeps a few) so the real entry point stays covered.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from click.testing import CliRunner, Result

__all__ = ["PROG_NAME", "run_cli"]

# How click names the program in usage lines when run as `python -m xkslab`.
PROG_NAME = "python -m xkslab"

_LOCK = threading.Lock()


@contextmanager
def _logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    alembic = logging.getLogger("alembic")
    handlers, level, alembic_level = list(root.handlers), root.level, alembic.level
    flags = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        alembic.setLevel(alembic_level)
        (
            logging._srcfile,
            logging.logThreads,
            logging.logProcesses,
            logging.logMultiprocessing,
        ) = flags


def _invoke(
    args: Sequence[str], input_data: str | bytes | None, env: Mapping[str, str | None] | None
) -> Result:
    from xkslab.cli import main

    runner = CliRunner()
    with _logging_restored():
        return runner.invoke(main, list(args), input=input_data, env=env, prog_name=PROG_NAME)


def run_cli(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str | None] | None = None,
    input: str | bytes | None = None,  # the name subprocess.run gives it
    text: bool = True,
    check: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """Run ``xkslab ARGS`` in this process, as ``subprocess.run([sys.executable, "-m", "xkslab", *args],
    capture_output=True, text=text, env={**os.environ, **env}, input=input, check=check)`` would.
    With ``text=False`` stdout and stderr are bytes; a variable given as None is unset for the call."""
    argv = [os.fspath(a) for a in args]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = _invoke(argv, input, env)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    with _LOCK:
        thread = threading.Thread(target=target, name="xkslab-cli", daemon=True)
        thread.start()
        thread.join()
    if "error" in box:
        raise box["error"]
    result: Result = box["result"]
    stdout, stderr = result.stdout_bytes, result.stderr_bytes or b""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        stderr += "".join(traceback.format_exception(*result.exc_info)).encode()
    out: Any = stdout.decode("utf-8", "replace") if text else stdout
    err: Any = stderr.decode("utf-8", "backslashreplace") if text else stderr
    proc = subprocess.CompletedProcess([PROG_NAME, *argv], result.exit_code, out, err)
    if check:
        proc.check_returncode()
    return proc
