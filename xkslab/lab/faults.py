"""A client for the XKS proxy's fault admin endpoint (``/xkslab/v1/faults``, README: Breaking things on
purpose), shared by ``xkslab faults`` and the pytest plugin: plain HTTP with the bearer token from
``xks.admin_token_file``. Light to import (no service code): the pytest plugin is loaded in every run.

``applied(client, faults)`` is the context manager that sets faults and clears exactly those on exit, an
exception or not, so one test's faults never reach the next."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xkslab_shared.faults_wire import FAULTS_PATH, Fault, parse_fault
from xkslab_shared.proxy_link import read_token

if TYPE_CHECKING:
    import urllib.error

__all__ = ["FaultsClient", "FaultsError", "applied", "fault_from"]


class FaultsError(RuntimeError):
    """The admin endpoint could not be used: no token, the proxy unreachable, or its refusal (``status``,
    e.g. 400 for a fault it does not accept, 401 for a wrong token)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FaultsClient:
    """The admin endpoint of the proxy at ``url`` (its base URL, e.g. the lab's plain HTTP listener),
    authenticated with the token in ``token_file``, read at each call (the proxy creates it on start)."""

    url: str
    token_file: Path
    timeout_s: float = 30.0

    def call(self, method: str, path: str = "", body: Any = None) -> Any:
        """One call: ``path`` after ``/xkslab/v1/faults``; the decoded JSON answer."""
        import urllib.error  # here: the CLI imports this module for every command
        import urllib.request

        try:
            token = read_token(self.token_file)
        except (OSError, ValueError) as exc:
            raise FaultsError(f"cannot read the proxy's admin token ({self.token_file}): {exc}") from None
        request = urllib.request.Request(  # noqa: S310 (the lab's own URL, or the one given)
            self.url.rstrip("/") + FAULTS_PATH + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise FaultsError(f"the proxy refused: HTTP {exc.code} {_reason(exc)}", exc.code) from None
        except (OSError, ValueError) as exc:
            raise FaultsError(f"cannot reach the XKS proxy at {self.url}: {exc}") from None

    def list_faults(self) -> list[dict[str, Any]]:
        """The faults set, active and pending, each with its ``id``, ``state``, ``applied``, ``fault``..."""
        return list(self.call("GET")["faults"])

    def add(self, faults: Iterable[Fault | Mapping[str, Any]]) -> list[str]:
        """Set these faults (a schedule, by their ``start_s``); their ids, in order. Each is checked
        (``fault_from``) before any is sent."""
        body = {"faults": [fault_from(spec).to_json() for spec in faults]}
        return [str(fault_id) for fault_id in self.call("POST", body=body)["ids"]]

    def clear(self, fault_id: str | None = None) -> int:
        """Remove one fault, or (no id) every fault; how many were removed."""
        return int(self.call("DELETE", f"/{fault_id}" if fault_id else "")["cleared"])


def _reason(exc: urllib.error.HTTPError) -> Any:
    """The proxy's ``error`` text, else the HTTP reason; the answer is closed either way."""
    try:
        return json.loads(exc.read()).get("error", exc.reason)
    except (OSError, ValueError, AttributeError):
        return exc.reason
    finally:
        with contextlib.suppress(Exception):
            exc.close()


def fault_from(spec: Fault | Mapping[str, Any]) -> Fault:
    """A fault from its API form (``{"kind": "error", "error_name": ...}``), checked here as the proxy
    checks it: FaultSpecError (a ValueError) names a wrong field before anything is sent."""
    return spec if isinstance(spec, Fault) else parse_fault(dict(spec))


@contextlib.contextmanager
def applied(client: FaultsClient, faults: Iterable[Fault | Mapping[str, Any]]) -> Iterator[list[str]]:
    """Set ``faults`` on the proxy for the ``with`` block; yields their ids and clears exactly those on
    exit, however the block ends (a fault that has run its course is simply gone already)."""
    ids = client.add(faults)
    try:
        yield ids
    finally:
        failed: list[FaultsError] = []
        for fault_id in ids:  # every one is tried, whatever happens to the others
            try:
                client.clear(fault_id)
            except FaultsError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
