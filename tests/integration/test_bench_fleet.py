"""The benchmark's fleet scenario (issue 23): ``xkslab up --fleet 2,2`` on a scratch PostgreSQL database
behind HAProxy, driven for a moment with XKS Encrypt through the balancer beside its ceiling of the same
shape (HAProxy in front of two two-hop chains); and without a PostgreSQL server it is skipped with the
reason, the rest of the run going on. Speed figures are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import deadlines
from tests.conftest import PG_ADMIN_DSN


def bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "xkslab", "bench", "--scenario", "fleet-xks-encrypt", "--duration", "1"]
    command += ["--connections", "4", "--pool-size", "4", "--warmup", "0", "--out", str(out), *args]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, **deadlines.environ()},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done, json.loads(out.read_text())


def test_the_fleet_scenario_runs_beside_its_ceiling(tmp_path: Path) -> None:
    done, report = bench(tmp_path, "--postgres-dsn", PG_ADMIN_DSN)
    scenarios = report["scenarios"]
    assert isinstance(scenarios, list)
    [result] = scenarios
    assert result["scenario"] == "fleet-xks-encrypt" and result["ceiling"] == "fleet-two-hop"
    assert result["requests"] - result["non2xx"] > 0, result  # real, accepted requests
    assert result["x_ceiling"] is not None and result["x_ceiling"] > 0
    anchors = report["anchors"]
    assert isinstance(anchors, list)
    [ceiling] = [a for a in anchors if a["scenario"] == "fleet-two-hop"]
    assert ceiling["requests"] > 0 and ceiling["non2xx"] == 0
    assert "lab (fleet)" in report["peak_rss_mb"]  # type: ignore[operator]
    assert "fleet-xks-encrypt" in done.stdout


def test_without_postgresql_the_fleet_scenario_is_skipped_with_the_reason(tmp_path: Path) -> None:
    done, report = bench(tmp_path, "--postgres-dsn", "")
    assert report["scenarios"] == []
    assert "--postgres-dsn" in report["skipped"]["fleet-xks-encrypt"]  # type: ignore[index]
    assert "skipped" in done.stdout
