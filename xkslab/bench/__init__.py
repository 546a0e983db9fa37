"""The benchmark (``xkslab bench``, ``scripts/bench``): xkslab under wrk beside anchors measured in the
same run. Top floor, beside the lab: it starts labs as processes and imports no service."""

# Here, not in run.py, so that `xkslab --help` lists them without importing the benchmark (botocore).
SCENARIOS = (
    "xks-encrypt",
    "xks-decrypt",
    "kms-generate-data-key",
    "kms-decrypt",
    "dsm-encrypt",
    "xks-encrypt-postgres",
    "xks-decrypt-postgres",
)
# Not run unless asked (they need HAProxy and PostgreSQL): xkslab/bench/fleet.py.
FLEET_SCENARIOS = ("fleet-xks-encrypt",)
