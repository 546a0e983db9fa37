#!/usr/bin/env python
"""Measure what a flood of wrong logins or badly signed XKS calls does to the XKS path (issue 11 #6,
issue 19 #6), by hand, not in CI.

For each kind of flood (xkslab.bench.flood.KINDS: wrong API keys for one app, wrong passwords for the
administrator, made-up app ids, made-up emails, XKS Encrypt calls signed with a wrong secret), in a
fresh ``xkslab up`` each so that no kind meets the limits another one tripped: wrk's XKS Encrypt
scenario alone, then beside wrk sending the flood (wrong ``Basic`` logins to the DSM, or bad signatures
to the XKS proxy) at ``--rate`` per second, then alone again, and the ratio of the run beside the flood
to the mean of the two alone; with ``--rounds N``, N runs beside the flood, each between two alone
and compared with them (pair by pair), the median ratio reported. It also reports the CPU of the proxy
and the key manager per Encrypt and per flood request, and the flooding wrk's own (it shares the cores),
and with ``--ceiling`` the same load beside the same flood sent to one bare aiohttp server (what the
flooding wrk and any Python HTTP answer cost the machine) and to a bare two-hop aiohttp chain (what any
request forwarded between two Python processes costs it). Prints a table and, with
``--json``, the figures. Usage::

    PYTHONPATH=. python scripts/login_flood.py [--duration 10] [--rate 1000] [--kinds wrong-key,...]
    PYTHONPATH=. python scripts/login_flood.py --kinds bad-signature --rounds 3 \
        --flood-connections 128 --ceiling
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xkslab.bench import flood, pools, wrk
from xkslab.bench.lab import Anchor, Lab, descendants, process_name
from xkslab.lab.process import fresh_database

LEAD_S = 1.0  # the flood runs this long before the XKS load starts beside it


def measure(
    kind: str,
    rate: float,
    settings: wrk.WrkSettings,
    workdir: Path,
    warmup_s: float,
    postgres: str | None = None,
    *,
    rounds: int = 1,
    flood_connections: int = 32,
    ceiling: bool = False,
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        lab_settings = {"database.url": stack.enter_context(fresh_database(postgres))} if postgres else {}
        lab = stack.enter_context(Lab(workdir / "data", workdir / "up.log", lab_settings))
        anchors = (
            {hops: stack.enter_context(Anchor(f"{hops}-hop", hops=hops)) for hops in (1, 2)}
            if ceiling
            else {}
        )
        return _measure(lab, kind, rate, settings, warmup_s, rounds, flood_connections, anchors)


def _service_pids(lab: Lab) -> dict[str, int]:
    """The proxy's and the key manager's process ids (their CPU is read from /proc around each run)."""
    assert lab.process is not None
    found = {}
    for pid in descendants(lab.process.pid):
        words = process_name(pid).split()
        if len(words) >= 3 and words[1] in ("xks", "dsm") and words[2] == "serve":
            found[words[1]] = pid
    return found


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(
    lab: Lab,
    kind: str,
    rate: float,
    settings: wrk.WrkSettings,
    warmup_s: float,
    rounds: int,
    flood_connections: int,
    anchors: dict[int, Anchor],
) -> dict[str, Any]:
    info = lab.info
    pool = pools.xks_encrypt(info, 64)
    url = info["xks"]["url"]
    identity = flood.app_id_of(info["dsm"]["api_key"]) if kind == "wrong-key" else info["dsm"]["admin_email"]
    xks_kind = kind in flood.XKS_KINDS
    target = url if xks_kind else info["dsm"]["url"]
    bad = tuple(pools.xks_encrypt_bad_signature(info, 64)) if xks_kind else ()
    pids = _service_pids(lab)

    def statuses() -> dict[str, int]:
        # The XKS kinds: by errorName (the statuses follow from them), so that a 500 says which error.
        return flood.xks_errors(url) if xks_kind else flood.login_statuses(info["dsm"]["url"])

    def timed(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        before = {name: _cpu_s(pid) for name, pid in pids.items()}
        result = run()
        result["cpu_s"] = {name: round(_cpu_s(pid) - before[name], 3) for name, pid in pids.items()}
        return result

    def beside(flood_url: str) -> dict[str, Any]:
        counted = statuses()
        flooder = flood.FloodProcess(
            flood_url,
            flood.Flood(
                kind,
                identity,
                rate,
                settings.duration_s + LEAD_S + 1,
                connections=flood_connections,
                requests=bad,
            ),
        )
        time.sleep(LEAD_S)
        measured = timed(lambda: wrk.run(url, pool, settings))
        measured["flood"] = flooder.result()
        answered = flood.difference(statuses(), counted)
        measured["flood"]["statuses"] = flood.by_status(answered) if xks_kind else answered
        if xks_kind:
            measured["flood"]["errors"] = answered
        return measured

    wrk.run(url, pool, wrk.WrkSettings(duration_s=warmup_s, connections=settings.connections))
    # Alone, then beside the flood, then alone again, round after round in the same lab: each run
    # beside is compared with the mean of the runs alone just before and after it (pair by pair), so
    # a drift of the machine's speed during the measurement is not counted for or against the flood.
    alone = [timed(lambda: wrk.run(url, pool, settings))]
    besides: list[dict[str, Any]] = []
    ceilings: dict[int, list[dict[str, Any]]] = {hops: [] for hops in anchors}
    for _ in range(rounds):
        besides.append(beside(target))
        for hops, anchor in anchors.items():
            ceilings[hops].append(beside(anchor.url))
        alone.append(timed(lambda: wrk.run(url, pool, settings)))

    def ratios(runs: list[dict[str, Any]]) -> list[float]:
        found = []
        for i, run in enumerate(runs):
            reference = (alone[i]["rps"] + alone[i + 1]["rps"]) / 2
            found.append(round(run["rps"] / reference, 3) if reference else 0.0)
        return found

    pair_ratios = ratios(besides)
    middle = sorted(range(rounds), key=lambda i: pair_ratios[i])[rounds // 2]
    sent = [run["flood"] for run in besides]
    result = {
        "kind": kind,
        "rounds": rounds,
        "xks_encrypt_alone": alone[middle],
        "xks_encrypt_beside_flood": besides[middle],
        "xks_encrypt_alone_after": alone[middle + 1],
        "flood": {
            **besides[middle]["flood"],
            "sent": sum(f["sent"] for f in sent),
            "socket_errors": sum(f["socket_errors"] for f in sent),
            "statuses": _sum_counts([f["statuses"] for f in sent]),
            **({"errors": _sum_counts([f["errors"] for f in sent])} if xks_kind else {}),
        },
        "ratio": pair_ratios[middle],  # the median of the rounds' ratios
        "ratios": pair_ratios,
        "runs_alone": alone,
        "runs_beside": besides,
        "cpu_us_per_request": _cpu_per_request(alone, besides),
    }
    if 2 in anchors:
        result["runs_beside_ceiling"] = ceilings[2]
        result["ceiling_ratios"] = ratios(ceilings[2])
    if 1 in anchors:
        # The flood answered by one bare aiohttp process: what the flooding wrk and any Python HTTP
        # answer cost the machine, the least a refusal can cost (the lab's adds the link, the key manager).
        result["runs_beside_one_hop"] = ceilings[1]
        result["one_hop_ratios"] = ratios(ceilings[1])
    return result


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    return {k: sum(c.get(k, 0) for c in counts) for k in sorted({k for c in counts for k in c})}


def _cpu_per_request(alone: list[dict[str, Any]], besides: list[dict[str, Any]]) -> dict[str, float]:
    """CPU of each service per XKS Encrypt alone and per flood request (what a run beside the flood cost
    more than its Encrypts cost alone, over the flood requests sent meanwhile), and what the flooding
    client cost: per request, and as a share of one core while it ran."""
    out: dict[str, float] = {}
    served = sum(run["requests"] for run in alone)
    flooded = sum(run["flood"]["per_s"] * run["seconds"] for run in besides)  # during the measured runs
    for name in alone[0]["cpu_s"]:
        per_encrypt = sum(run["cpu_s"][name] for run in alone) / served if served else 0.0
        extra = sum(run["cpu_s"][name] - run["requests"] * per_encrypt for run in besides)
        out[f"{name}_per_encrypt_us"] = round(1e6 * per_encrypt, 1)
        out[f"{name}_per_flood_request_us"] = round(1e6 * extra / flooded, 1) if flooded else 0.0
    client = sum(run["flood"]["client_cpu_s"] for run in besides)
    sent = sum(run["flood"]["sent"] for run in besides)
    lasted = sum(run["flood"]["sent"] / run["flood"]["per_s"] for run in besides if run["flood"]["per_s"])
    out["flood_client_per_request_us"] = round(1e6 * client / sent, 1) if sent else 0.0
    out["flood_client_core_share"] = round(client / lasted, 3) if lasted else 0.0
    return out


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
        if r["flood"].get("errors"):
            lines.append(
                f"{'':<13} errorNames of the non-2xx answers during the runs beside the flood (the "
                f"measured load's included; {flood.CLIENT_GONE}: requests whose client left unanswered): "
                + " ".join(f"{name}:{n}" for name, n in r["flood"]["errors"].items())
            )
        if r.get("rounds", 1) > 1 or "ceiling_ratios" in r:
            lines.append(f"{'':<13} ratios pair by pair: {' '.join(f'{x:.2f}' for x in r['ratios'])}")
        if "ceiling_ratios" in r:
            lines.append(
                f"{'':<13} beside the same flood sent to a bare two-hop aiohttp chain instead: "
                + " ".join(f"{x:.2f}" for x in r["ceiling_ratios"])
            )
        if "one_hop_ratios" in r:
            lines.append(
                f"{'':<13} beside the same flood sent to one bare aiohttp server instead: "
                + " ".join(f"{x:.2f}" for x in r["one_hop_ratios"])
            )
        cpu = r.get("cpu_us_per_request")
        if cpu:
            lines.append(f"{'':<13} CPU us per request: " + ", ".join(f"{k} {v:g}" for k, v in cpu.items()))
    return "\n".join(lines)


@contextlib.contextmanager
def _workdir(keep: Path | None, kind: str) -> Iterator[str]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix=f"xkslab-flood-{kind}-") as tmp:
            yield tmp
        return
    (keep / kind).mkdir(parents=True)  # a fresh lab each time: an existing one is not reused
    yield str(keep / kind)


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
    parser.add_argument("--rounds", type=int, default=1, help="runs beside the flood, each between two alone")
    parser.add_argument(
        "--flood-connections",
        type=int,
        default=32,
        help="connections of the flooding wrk (it can send at most this many per answer time: beside a "
        "loaded lab, 1,000/s needs about 128)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the XKS load beside the same flood sent to one bare aiohttp server (what the flooding "
        "wrk and any Python HTTP answer cost the machine) and to a bare two-hop aiohttp chain (what any "
        "request forwarded from one Python process to another costs it)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="run each lab in DIR/<kind> and keep it (its data directory and up.log, the services' "
        "logs) instead of a temporary directory removed afterwards",
    )
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in flood.KINDS]
    if unknown:
        parser.error(f"unknown flood kind(s) {', '.join(unknown)}: choose from {', '.join(flood.KINDS)}")
    settings = wrk.WrkSettings(duration_s=args.duration, connections=args.connections)
    results = []
    for kind in kinds:
        with _workdir(args.keep, kind) as tmp:
            results.append(
                measure(
                    kind,
                    args.rate,
                    settings,
                    Path(tmp),
                    args.warmup,
                    args.postgres,
                    rounds=args.rounds,
                    flood_connections=args.flood_connections,
                    ceiling=args.ceiling,
                )
            )
        print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
