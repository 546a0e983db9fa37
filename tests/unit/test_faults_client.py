"""The fault admin client shared by ``xkslab faults`` and the pytest plugin, without a proxy: its errors,
and ``applied``, which clears exactly the faults it set, however the block ends."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from xkslab.lab.faults import FaultsClient, FaultsError, applied
from xkslab_shared.faults_wire import FaultSpecError


class Recorder(FaultsClient):
    """Answers as the proxy would, and notes every call; clearing ``fail_on`` fails."""

    def __init__(self, fail_on: str | None = None) -> None:
        super().__init__("http://127.0.0.1:1", Path("unused"))
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "fail_on", fail_on)

    def call(self, method: str, path: str = "", body: Any = None) -> Any:
        self.calls.append((method, path, body))
        if method == "POST":
            return {"ids": [f"f{i + 1}" for i in range(len(body["faults"]))]}
        if path == f"/{self.fail_on}":
            raise FaultsError("the proxy refused: HTTP 500 boom", 500)
        return {"cleared": 1}


def test_applied_clears_exactly_its_faults_even_when_the_block_fails() -> None:
    client = Recorder()
    with pytest.raises(RuntimeError, match="the test failed"):
        with applied(client, [{"kind": "drop"}, {"kind": "throttle", "count": 2}]) as ids:
            assert ids == ["f1", "f2"]
            raise RuntimeError("the test failed")
    sent = client.calls[0][2]["faults"]
    assert [(fault["kind"], fault.get("count")) for fault in sent] == [("drop", None), ("throttle", 2)]
    assert [call[:2] for call in client.calls[1:]] == [("DELETE", "/f1"), ("DELETE", "/f2")]


def test_a_failed_clear_does_not_stop_the_others() -> None:
    client = Recorder(fail_on="f1")
    with pytest.raises(FaultsError, match="HTTP 500"):
        with applied(client, [{"kind": "drop"}, {"kind": "drop"}]):
            pass
    assert [call[1] for call in client.calls[1:]] == ["/f1", "/f2"]


def test_a_bad_fault_is_refused_before_anything_is_sent() -> None:
    client = Recorder()
    with pytest.raises(FaultSpecError, match="error_name"):
        with applied(client, [{"kind": "drop"}, {"kind": "error", "error_name": "NoSuchError"}]):
            pass
    assert client.calls == []


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FaultsError, match="cannot read the proxy's admin token"):
        FaultsClient("http://127.0.0.1:1", tmp_path / "missing").list_faults()
    token = tmp_path / "token"
    token.write_text("t" * 43)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FaultsError, match="cannot reach the XKS proxy") as caught:
        FaultsClient(f"http://127.0.0.1:{port}", token, timeout_s=5).list_faults()
    assert caught.value.status is None
