#!/usr/bin/env python
"""Measure what a flood of wrong logins or badly signed XKS calls does to the XKS path (issue 11 #6,
issue 19 #6), by hand, not in CI.

For each kind of flood (xkslab.bench.flood.KINDS: wrong API keys for one app, wrong passwords for the
administrator, made-up app ids, made-up emails, XKS Encrypt calls signed with a wrong secret), in a
fresh ``xkslab up`` each so that no kind meets the limits another one tripped: wrk's XKS Encrypt
scenario alone, then beside wrk sending the flood (wrong ``Basic`` logins to the DSM, or bad signatures
to the XKS proxy) at ``--rate`` per second, then alone again, and the ratio of the run beside the flood
to the mean of the two alone. Prints a table and, with
``--json``, the figures. Usage::

    PYTHONPATH=. python scripts/login_flood.py [--duration 10] [--rate 1000] [--kinds wrong-key,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xkslab.bench import flood, pools, wrk
from xkslab.bench.lab import Lab
from xkslab.lab.process import fresh_database

LEAD_S = 1.0  # the flood runs this long before the XKS load starts beside it


def measure(
    kind: str,
    rate: float,
    settings: wrk.WrkSettings,
    workdir: Path,
    warmup_s: float,
    postgres: str | None = None,
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        lab_settings = {"database.url": stack.enter_context(fresh_database(postgres))} if postgres else {}
        lab = stack.enter_context(Lab(workdir / "data", workdir / "up.log", lab_settings))
        return _measure(lab, kind, rate, settings, warmup_s)


def _measure(lab: Lab, kind: str, rate: float, settings: wrk.WrkSettings, warmup_s: float) -> dict[str, Any]:
    info = lab.info
    pool = pools.xks_encrypt(info, 64)
    url = info["xks"]["url"]
    identity = flood.app_id_of(info["dsm"]["api_key"]) if kind == "wrong-key" else info["dsm"]["admin_email"]
    xks_kind = kind in flood.XKS_KINDS
    target = url if xks_kind else info["dsm"]["url"]
    bad = tuple(pools.xks_encrypt_bad_signature(info, 64)) if xks_kind else ()

    def statuses() -> dict[str, int]:
        return flood.xks_refusals(url) if xks_kind else flood.login_statuses(info["dsm"]["url"])

    wrk.run(url, pool, wrk.WrkSettings(duration_s=warmup_s, connections=settings.connections))
    alone = wrk.run(url, pool, settings)
    before = statuses()
    flooder = flood.FloodProcess(
        target, flood.Flood(kind, identity, rate, settings.duration_s + LEAD_S + 1, requests=bad)
    )
    time.sleep(LEAD_S)
    beside = wrk.run(url, pool, settings)
    sent = flooder.result()
    sent["statuses"] = flood.difference(statuses(), before)
    # Alone again once the flood is over: the ratio is to the mean of the runs before and after, so that
    # a drift of the machine's speed during the measurement is not counted for or against the flood.
    after = wrk.run(url, pool, settings)
    reference = (alone["rps"] + after["rps"]) / 2
    return {
        "kind": kind,
        "xks_encrypt_alone": alone,
        "xks_encrypt_beside_flood": beside,
        "xks_encrypt_alone_after": after,
        "flood": sent,
        "ratio": round(beside["rps"] / reference, 3) if reference else None,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'flood':<13} {'flood/s':>9} {'XKS alone':>10} {'beside':>8} {'after':>6} {'ratio':>6} "
        f"{'p99 ms':>7} {'XKS non-2xx':>12}  flood statuses"
    ]
    for r in results:
        alone, beside = r["xks_encrypt_alone"], r["xks_encrypt_beside_flood"]
        after = r["xks_encrypt_alone_after"]
        lines.append(
            f"{r['kind']:<13} {r['flood']['per_s']:>9,.0f} {alone['rps']:>10,.0f} {beside['rps']:>8,.0f} "
            f"{after['rps']:>6,.0f} {r['ratio']:>6.2f} {beside['p99_ms']:>7.1f} "
            f"{beside['non2xx'] + beside['socket_errors']:>12}  "
            + " ".join(f"{status}:{n}" for status, n in r["flood"]["statuses"].items())
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each XKS run")
    parser.add_argument("--rate", type=float, default=1000.0, help="flood requests per second")
    parser.add_argument("--connections", type=int, default=32, help="connections of the XKS load")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of XKS load before measuring")
    parser.add_argument("--kinds", default=",".join(flood.KINDS), help="comma-separated flood kinds")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run each lab on a fresh database of this PostgreSQL server "
        "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test) instead of SQLite",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in flood.KINDS]
    if unknown:
        parser.error(f"unknown flood kind(s) {', '.join(unknown)}: choose from {', '.join(flood.KINDS)}")
    settings = wrk.WrkSettings(duration_s=args.duration, connections=args.connections)
    results = []
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix=f"xkslab-flood-{kind}-") as tmp:
            results.append(measure(kind, args.rate, settings, Path(tmp), args.warmup, args.postgres))
        print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
