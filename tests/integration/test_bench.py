"""The benchmark keeps working: every scenario and anchor runs for a moment against a real lab (SQLite and
PostgreSQL) and a real wrk. Speed figures are not asserted (shared machines); that each scenario got
successful answers, and that the report has its columns, is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import deadlines
from xkslab.bench.run import ANCHORS, SCENARIOS


def test_bench_runs_every_scenario_and_anchor(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "xkslab",
            "bench",
            "--duration",
            "1",
            "--connections",
            "2",
            "--pool-size",
            "4",
            "--warmup",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, **deadlines.environ()},  # its labs: accepted requests, not timeouts, on a stall
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["scenario"] for r in report["scenarios"]] == list(SCENARIOS)
    assert [a["scenario"] for a in report["anchors"]] == list(ANCHORS)
    for r in report["scenarios"] + report["anchors"]:
        assert r["requests"] - r["non2xx"] > 0, r  # real, accepted requests, not a pool of refusals
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"], r
    for r in report["scenarios"]:
        assert r["x_ceiling"] is not None and r["x_moto"] is not None
    assert "lab (sqlite)" in report["peak_rss_mb"] and "lab (postgres)" in report["peak_rss_mb"]
    assert "xks-encrypt" in done.stdout and "x ceiling" in done.stdout


def test_bench_audit_rows_fills_the_log_and_measures_it_on_both_databases(tmp_path: Path) -> None:
    from xkslab.bench.auditlog import filters

    out = tmp_path / "bench.json"
    args = ["--duration", "1", "--connections", "2", "--pool-size", "4", "--warmup", "0", "--out", str(out)]
    args += ["--scenario", "xks-encrypt", "--scenario", "xks-encrypt-postgres", "--audit-rows", "3000"]
    done = subprocess.run(
        [sys.executable, "-m", "xkslab", "bench", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, **deadlines.environ()},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["audit_log"]) == {"sqlite", "postgres"}
    for lab, figures in report["audit_log"].items():
        assert figures["rows_filled"] == 3000 and figures["rows_total"] >= 3000, lab
        assert set(figures["filters_ms"]) == set(filters("a", "b")), lab
        assert all(ms > 0 for ms in figures["filters_ms"].values()), figures
        assert figures["verify_ok"] is True and figures["verify_full_rows"] == figures["rows_total"]
        # the resumed verify checked the scenario's rows only: more than none, fewer than the fill
        assert figures["verify_resumed_ok"] is True and 0 < figures["verify_resumed_rows"] < 3000, figures
        assert 0 < figures["audit_commit_p50_ms"] <= figures["audit_commit_p90_ms"], figures
    assert "audit log (sqlite)" in done.stdout and "verify resumed" in done.stdout
