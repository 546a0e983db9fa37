"""The CI recipes in docs/ci run as written: each file is parsed as YAML and its shell steps are run here in
order with bash, in a temporary directory (so with a data directory of its own), as the CI runner would:

- GitHub Actions: every ``run:`` step in its own ``bash -eo pipefail`` process; what a step appends to
  $GITHUB_ENV is in the environment of the steps after it. ``uses:`` steps (checkout, setup-python,
  upload-artifact) are GitHub's own and skipped, but upload-artifact's path must exist at its turn.
- GitLab CI: ``before_script`` and ``script`` in one bash process (so ``eval`` carries), ``after_script`` in
  another; the artifact paths must exist at the end.

The install step runs as written, in a virtual environment made without xkslab for this module (first on PATH,
so ``pip``, ``python`` and ``xkslab`` are its own), from a wheel built from this checkout: the recipe's
``XKSLAB_SOURCE`` (its repository's URL) is the one value changed, to that wheel's ``file://`` URL, and pip
gets this repository's constraints.txt (the dependency versions the suite passed with). Both recipes' install
lines are the same command, so the two share that environment: the first recipe to run installs into it, the
second runs its own install step there (pip finds it satisfied), and each checks afterwards that the
environment's xkslab is the wheel's; the install and its bytecode compilation of every dependency, most of
each test's CPU, is done once. The test step becomes a small boto3 round trip that reads only the environment
the recipe gave it. Every step must exit 0, and no process of the lab may be left behind. Ports are free ones
(XKSLAB_*_PORT=0 in the environment), so the recipe runs beside other labs on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_detach import parse_github_env, running

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "docs" / "ci"
INSTALL = 'pip install "xkslab[pytest] @ ${XKSLAB_SOURCE}"'
SOURCE = "XKSLAB_SOURCE"
TESTS = "python -m pytest -q"
STEP_TIMEOUT_S = 600  # far above any step; only turns a hang into a failure
FREE_PORTS = {
    f"XKSLAB_{name}": "0" for name in ("DSM_PORT", "DSM_HTTPS_PORT", "XKS_PORT", "XKS_HTTPS_PORT", "KMS_PORT")
}
# The stand-in for the suite under test: the lab's KMS through nothing but the environment the recipe made.
ROUND_TRIP = (
    'python -c \'import boto3; k = boto3.client("kms"); '
    'b = k.encrypt(KeyId="alias/xkslab-demo", Plaintext=b"ci")["CiphertextBlob"]; '
    'assert k.decrypt(CiphertextBlob=b)["Plaintext"] == b"ci"; print("round trip ok")\''
)


def processes_in(work: Path) -> list[int]:
    """Running processes whose working directory is ``work`` or below it: whatever the steps started
    (the lab's processes keep the directory the recipe ran them in)."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            where = Path(os.readlink(cwd))
        except OSError:
            continue
        pid = int(cwd.parent.name)
        if pid != os.getpid() and where.is_relative_to(work) and running(pid):
            found.append(pid)
    return found


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((RECIPES / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def recipes_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtual environment (pip only, no xkslab when made) whose bin/ the recipes' steps find first
    on PATH; the first recipe's install step fills it."""
    where = tmp_path_factory.mktemp("recipes") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=STEP_TIMEOUT_S)
    return where / "bin"


@pytest.fixture
def workdir(tmp_path: Path, xkslab_wheel: Path, recipes_venv: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A workspace of its own, the module's virtual environment, and a clean environment (that venv first
    on PATH, XKSLAB_SOURCE the wheel of this checkout); the lab is stopped and checked afterwards,
    whatever happened."""
    work, home = tmp_path / "work", tmp_path / "home"
    for path in (work, home):
        path.mkdir()
    venv_bin = recipes_venv
    env = {
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "AWS_EC2_METADATA_DISABLED": "true",
        SOURCE: xkslab_wheel.as_uri(),
        "PIP_CONSTRAINT": str(REPO / "constraints.txt"),
        # This machine's pip settings and cache (HOME is the workspace's own).
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        **{
            name: value
            for name, value in os.environ.items()
            if name.startswith("PIP_") and name != "PIP_CONSTRAINT"
        },
        **FREE_PORTS,
    }
    data_dir = work / ".xkslab"
    try:
        yield work, env
    finally:
        leftover = processes_in(work)
        if leftover:  # the recipe's own `down` failed: stop the lab, then kill what is left, by pid
            subprocess.run(
                [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), "down"],
                env={**os.environ, **env},
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
            for pid in processes_in(work):
                os.kill(pid, signal.SIGKILL)
        assert leftover == [], f"processes left behind: {leftover}"


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=STEP_TIMEOUT_S,
    )


def local(line: str) -> str:
    """A recipe's line as it runs here: the tests are the round trip; every other line as written."""
    return {TESTS: ROUND_TRIP}.get(line.strip(), line)


def installed_from_the_wheel(work: Path, env: dict[str, str]) -> None:
    """The install step put this checkout's xkslab into the workspace's venv, with the pytest extra."""
    shown = bash("pip show xkslab pytest-xdist sdkms && command -v xkslab", work, env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().endswith("/venv/bin/xkslab")
    assert "Location: " in shown.stdout and str(REPO) not in shown.stdout
    # Installed from the wheel at XKSLAB_SOURCE (pip's record of where it came from), not from elsewhere.
    origin = bash(
        'python -c \'import importlib.metadata as m; print(m.distribution("xkslab").read_text("direct_url.json"))\'',
        work,
        env,
    )
    assert origin.returncode == 0, origin.stderr
    assert env[SOURCE] in origin.stdout, origin.stdout


def test_the_github_actions_workflow(workdir: tuple[Path, dict[str, str]]) -> None:
    work, env = workdir
    (job,) = load("github-actions.yml")["jobs"].values()
    assert job["env"][SOURCE].startswith("git+https://"), "the recipe installs from the repository's URL"
    steps = job["steps"]
    assert [s["uses"].split("@")[0] for s in steps if "uses" in s] == [
        "actions/checkout",
        "actions/setup-python",
        "actions/upload-artifact",
    ]
    runs = [s["run"].strip() for s in steps if "run" in s]
    assert runs[0] == INSTALL and TESTS in runs
    assert "xkslab audit export --out audit.jsonl" in runs and runs[-1] == "xkslab down"
    github_env = work.parent / "github_env"
    github_env.write_text("")
    outputs: list[str] = []
    for step in steps:
        if "uses" in step:
            if step["uses"].startswith("actions/upload-artifact"):
                assert (work / step["with"]["path"]).is_file(), "the artifact is not there"
            continue
        assert "${{" not in step["run"], "expressions cannot run locally"
        # The job's env, but XKSLAB_SOURCE the wheel of this checkout (the workdir fixture's).
        job_env = {name: value for name, value in job["env"].items() if name != SOURCE}
        step_env = {
            **env,
            **job_env,
            **parse_github_env(github_env.read_text()),
            "GITHUB_ENV": str(github_env),
        }
        done = bash(local(step["run"].strip()), work, step_env)
        assert done.returncode == 0, f"step {step.get('id')}: {done.stderr}"
        outputs.append(done.stdout)
    installed_from_the_wheel(work, env)
    exported = parse_github_env(github_env.read_text())
    assert exported["AWS_ENDPOINT_URL_KMS"].startswith("http://127.0.0.1:")
    assert "round trip ok" in "".join(outputs)
    assert (work / "audit.jsonl").read_text().count("\n") > 0


def test_the_gitlab_ci_job(workdir: tuple[Path, dict[str, str]]) -> None:
    work, env = workdir
    (job,) = load("gitlab-ci.yml").values()
    assert job["variables"][SOURCE].startswith("git+https://"), (
        "the recipe installs from the repository's URL"
    )
    main = [local(line) for line in [*job["before_script"], *job["script"]]]
    assert job["before_script"][0] == INSTALL and job["script"] == [TESTS]
    assert job["after_script"] == ["xkslab audit export --out audit.jsonl", "xkslab down"]
    # GitLab's runner stops the job at the first failing line; `set -e` in one shell does the same here.
    done = bash("\n".join(main), work, env)
    after = bash("\n".join(job["after_script"]), work, env)  # its own shell, as GitLab runs it
    assert done.returncode == 0, done.stderr
    assert "round trip ok" in done.stdout
    installed_from_the_wheel(work, env)
    assert after.returncode == 0, after.stderr
    assert job["artifacts"]["when"] == "always"
    for path in job["artifacts"]["paths"]:
        assert (work / path).is_file() and (work / path).stat().st_size > 0
