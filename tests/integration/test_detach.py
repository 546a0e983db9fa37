"""`xkslab up --detach`, `wait`, `env` and `down` as a script or a CI job runs them: real processes on
loopback, free ports, and nothing left running afterwards.

Every loop here is bounded by the commands' own bounds (``wait --timeout``, ``down``'s), not by a
budget of this file's; the subprocess timeouts are only there so that a hang fails instead of blocking."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from tests import deadlines
from xkslab.lab.envfmt import FORMATS, format_env
from xkslab.lab.files import lab_env

PORTS = ("dsm.port", "dsm.https_port", "xks.port", "xks.https_port", "kms.port")
# Free ports, and the generous deadlines of a lab in a test (tests/deadlines.py).
FREE_PORTS = [*(arg for name in PORTS for arg in ("--set", f"{name}=0")), *deadlines.set_args()]
HANG_S = 900  # far above any start; only turns a hang into a failure


def xkslab(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=HANG_S,
    )


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's bookkeeping remains)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def lab_processes(data_dir: Path) -> list[int]:
    """Running xkslab processes whose command line names ``data_dir`` (up and its services do)."""
    root = str(data_dir)
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0")]
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if (
            pid != os.getpid()
            and any("xkslab" in a for a in argv)
            and any(a == root or a.startswith(root + "/") for a in argv)
            and running(pid)
        ):
            found.append(pid)
    return found


def lab_pids(data: dict[str, Any]) -> list[int]:
    return [data["pid"], *data["service_pids"].values()]


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    """Data directories whose labs must be gone after the test, however it ended."""
    dirs: list[Path] = []
    try:
        yield dirs
    finally:
        for data_dir in dirs:
            xkslab(data_dir, "down")
            for pid in lab_processes(data_dir):  # only if down failed: by pid, ours alone
                os.kill(pid, signal.SIGKILL)


def parse_github_env(text: str) -> dict[str, str]:
    """$GITHUB_ENV as the runner reads it: ``K=V`` lines and ``K<<DELIM`` ... ``DELIM`` blocks."""
    result: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        eq, heredoc = line.find("="), line.find("<<")
        if eq >= 0 and (heredoc < 0 or eq < heredoc):
            result[line[:eq]] = line[eq + 1 :]
            continue
        name, delimiter = line[:heredoc], line[heredoc + 2 :]
        body = []
        for inner in lines:
            if inner == delimiter:
                break
            body.append(inner)
        else:
            raise AssertionError(f"unterminated block for {name}")
        result[name] = "\n".join(body)
    return result


def sourced_by_bash(text: str, names: list[str], tmp_path: Path) -> dict[str, str]:
    """The exported variables bash has after sourcing ``text`` (from a clean environment)."""
    script = tmp_path / "env.sh"
    script.write_text(text + "\n")
    out = subprocess.run(
        ["bash", "-c", '. "$1" && env -0', "_", str(script)],
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        timeout=60,
        check=True,
    ).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {name: env[name] for name in names if name in env}


def parse(fmt: str, text: str, names: list[str], tmp_path: Path) -> dict[str, str]:
    if fmt == "shell":
        return sourced_by_bash(text, names, tmp_path)
    if fmt == "dotenv":
        return {k: v or "" for k, v in dotenv_values(stream=io.StringIO(text), interpolate=False).items()}
    if fmt == "json":
        return dict(json.loads(text))
    return parse_github_env(text)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_any_value(fmt: str, tmp_path: Path) -> None:
    env = {
        "PLAIN": "http://127.0.0.1:8700",
        "QUOTES": 'it\'s "quoted" $HOME `id` $(id) \\ back\\slash; & | * ?',
        "MULTI": "-----BEGIN X-----\nline two\n\nafter a blank line\n",
        "EMPTY": "",
        "SPACES": "  lead and trail  ",
        "UNICODE": "naïve ünïcode €",
    }
    text = format_env(env, fmt)
    assert parse(fmt, text, list(env), tmp_path) == env
    if fmt == "shell":
        assert text.splitlines()[0] == "export PLAIN=http://127.0.0.1:8700"  # simple values stay bare
    with pytest.raises(ValueError):
        format_env({"NOT A NAME": "x"}, fmt)


def test_up_detach_wait_env_down(tmp_path: Path, cleanup: list[Path]) -> None:
    lab = tmp_path / "lab"
    cleanup.append(lab)
    started = xkslab(lab, "up", "--detach", *FREE_PORTS)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == str(lab / "up.json")
    data = json.loads((lab / "up.json").read_text())
    assert (lab / "run" / "up.pid").read_text().strip() == str(data["pid"])
    assert all(running(pid) for pid in lab_pids(data))
    log = lab / "run" / "up.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and "xkslab is up" in log.read_text()

    # A second start is refused, and leaves the running lab and its log alone.
    again = xkslab(lab, "up", "--detach", *FREE_PORTS)
    assert again.returncode == 1 and f"already runs on {lab} (pid {data['pid']})" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "xkslab is up" in log.read_text()

    waited = xkslab(lab, "wait", "--timeout", "600", "--health")
    assert waited.returncode == 0, waited.stderr
    expected = lab_env(data)  # aws_env, and what sdkms-cli reads
    assert expected["FORTANIX_API_ENDPOINT"] == data["dsm"]["https_url"]
    assert expected["FORTANIX_API_KEY"] == data["dsm"]["api_key"]
    names = list(expected)
    for fmt in FORMATS:
        printed = xkslab(lab, "env", "--format", fmt)
        assert printed.returncode == 0, printed.stderr
        assert parse(fmt, printed.stdout, names, tmp_path) == expected, fmt
    assert xkslab(lab, "env").stdout == xkslab(lab, "env", "--format", "shell").stdout

    down = xkslab(lab, "down")
    assert down.returncode == 0, down.stderr
    assert f"(pid {data['pid']})" in down.stdout
    assert not any(running(pid) for pid in lab_pids(data))
    assert lab_processes(lab) == []
    assert not (lab / "up.json").exists() and not (lab / "run" / "up.pid").exists()
    assert "stopping" in log.read_text() and "Traceback" not in log.read_text()


SCRIPT = """
set -euo pipefail
xkslab() { "$PY" -m xkslab --data-dir "$DIR" "$@"; }
xkslab up --detach $SETS > "$OUT/path" && xkslab wait --timeout 600 && cp "$DIR/up.json" "$OUT/up.json" \
  && eval "$(xkslab env)" && "$PY" -c 'import os; print(os.environ["AWS_ENDPOINT_URL_KMS"])' > "$OUT/kms" \
  && xkslab down > "$OUT/down"
"""


def test_two_labs_in_parallel_leave_nothing_behind(tmp_path: Path, cleanup: list[Path]) -> None:
    """The chain a CI job runs, twice at once on two data directories (free ports each)."""
    runs = []
    for name in ("a", "b"):
        data_dir, out = tmp_path / name, tmp_path / f"{name}-out"
        out.mkdir()
        cleanup.append(data_dir)
        env = {**os.environ, "PY": sys.executable, "DIR": str(data_dir), "OUT": str(out)}
        env["SETS"] = " ".join(FREE_PORTS)
        env.pop("XKSLAB_DATA_DIR", None)
        process = subprocess.Popen(
            ["bash", "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        runs.append((data_dir, out, process))
    for data_dir, _, process in runs:
        _, stderr = process.communicate(timeout=HANG_S)
        log = data_dir / "run" / "up.log"
        assert process.returncode == 0, f"{stderr}\n{log.read_text() if log.exists() else ''}"
    saved = [json.loads((out / "up.json").read_text()) for _, out, _ in runs]
    assert saved[0]["aws_env"]["AWS_ENDPOINT_URL_KMS"] != saved[1]["aws_env"]["AWS_ENDPOINT_URL_KMS"]
    for (data_dir, out, _), data in zip(runs, saved, strict=True):
        assert (out / "path").read_text().strip() == str(data_dir / "up.json")
        assert (out / "kms").read_text().strip() == data["aws_env"]["AWS_ENDPOINT_URL_KMS"]
        assert "stopped the xkslab lab" in (out / "down").read_text()
        assert sorted(data["service_pids"]) == ["dsm", "kms", "xks"]
        assert [pid for pid in lab_pids(data) if running(pid)] == []
        assert lab_processes(data_dir) == []
        assert not (data_dir / "up.json").exists() and not (data_dir / "run" / "up.pid").exists()


def test_nothing_running(tmp_path: Path) -> None:
    for data_dir in (tmp_path / "absent", tmp_path):
        down = xkslab(data_dir, "down")
        assert down.returncode == 0 and "no xkslab lab is running" in down.stdout, down.stderr
        waited = xkslab(data_dir, "wait", "--timeout", "1")
        assert waited.returncode == 1 and waited.stdout == ""
        assert waited.stderr.strip().splitlines() == [f"Error: no xkslab lab ready on {data_dir} after 1 s"]
        env = xkslab(data_dir, "env", "--format", "json")
        assert env.returncode == 1 and env.stdout == "" and len(env.stderr.strip().splitlines()) == 1
        assert "no xkslab lab is ready" in env.stderr


def test_a_failed_start_says_why_and_leaves_nothing(tmp_path: Path, cleanup: list[Path]) -> None:
    """The KMS port is taken: the DSM and the proxy have started by then, and must go too."""
    lab = tmp_path / "lab"
    cleanup.append(lab)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = xkslab(lab, "up", "--detach", *FREE_PORTS, "--set", f"kms.port={port}")
    assert started.returncode == 1 and started.stdout == ""
    [line] = started.stderr.strip().splitlines()
    assert (
        "failed to start" in line and f"kms.port {port} is in use (set kms.port or use --free-ports)" in line
    )
    assert f"(log: {lab / 'run' / 'up.log'})" in line
    assert lab_processes(lab) == []
    assert not (lab / "run" / "up.pid").exists() and not (lab / "up.json").exists()


def test_down_stops_a_foreground_up_while_it_starts(tmp_path: Path, cleanup: list[Path]) -> None:
    """`up` started elsewhere (here: in the foreground of another process), stopped by `down` as soon as
    its first service is up, most likely before the lab is ready: the services started so far go too."""
    lab = tmp_path / "lab"
    cleanup.append(lab)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "xkslab", "--data-dir", str(lab), *FREE_PORTS, "up"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Bounded by up itself: it either starts the DSM or exits.
        while up.poll() is None and not (lab / "run" / "dsm.json").exists():
            try:
                up.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        assert up.poll() is None, log.read_text()
        service = json.loads((lab / "run" / "dsm.json").read_text())["pid"]
        down = xkslab(lab, "down")
        assert down.returncode == 0, down.stderr
        assert f"(pid {up.pid})" in down.stdout
        assert up.wait(HANG_S) in (0, 1), log.read_text()  # 1: stopped before it was ready
        assert not running(service) and lab_processes(lab) == []
        assert "Traceback" not in log.read_text() and not (lab / "up.json").exists()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
