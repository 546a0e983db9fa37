#!/usr/bin/env python
"""Memory under a steady load: is it flat after warm-up?

    python scripts/soak.py [--minutes 5] [--scenario xks-encrypt] [--connections 32]

Starts `xkslab up` on free ports in a temporary data directory (as `xkslab bench` does), drives one bench
scenario with wrk in 30-second rounds, and prints each service process's resident memory after every
round, with the growth from the end of the first round (the warm-up) to the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from xkslab.bench import wrk
from xkslab.bench.lab import Lab
from xkslab.bench.run import SCENARIOS, _pool_for

ROUND_S = 30


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument(
        "--scenario", choices=[s for s in SCENARIOS if not s.endswith("-postgres")], default="xks-encrypt"
    )
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    rounds = max(2, round(args.minutes * 60 / ROUND_S))
    work = Path(tempfile.mkdtemp(prefix="xkslab-soak-"))
    with Lab(work / "data", work / "lab.log") as lab:
        url, pool = _pool_for(args.scenario, lab.info, 64)
        pids: dict[str, int] = lab.info["service_pids"]
        load = wrk.WrkSettings(threads=2, connections=args.connections, duration_s=ROUND_S)
        history: list[dict[str, float]] = []
        for number in range(1, rounds + 1):
            result = wrk.run(url, pool, load)
            sample = {name: round(rss_mb(pid), 1) for name, pid in pids.items()}
            history.append(sample)
            print(
                json.dumps(
                    {"round": number, "rps": result["rps"], "non2xx": result["non2xx"], "rss_mb": sample}
                )
            )
    print()
    for name in pids:
        first, last = history[0][name], history[-1][name]
        growth = last - first
        print(
            f"{name}: {first:.1f} MB after warm-up -> {last:.1f} MB "
            f"after {rounds * ROUND_S} s ({growth:+.1f} MB)"
        )


if __name__ == "__main__":
    main()
