"""A plain install, as a user outside this repository has it: a wheel of this checkout in a fresh virtual
environment with pytest and nothing else (no sdkms SDK, no moto). The fixtures that need no sdkms work
(xkslab_lab, xkslab_kms_key, xkslab_dsm_key) in a project's own suite, which turns warnings into errors,
and ``xkslab bench`` says in one line which extra it needs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests import deadlines
from tests.integration.conftest import BUILD_TIMEOUT_S, CONSTRAINTS

PROJECT_TESTS = """
import importlib.util


def test_the_sdkms_sdk_is_not_installed():
    assert importlib.util.find_spec("sdkms") is None


def test_a_kms_key_without_sdkms(xkslab_lab, xkslab_kms_key):
    blob = xkslab_lab.kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"hi")["CiphertextBlob"]
    assert xkslab_lab.kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"hi"


def test_a_dsm_key_without_sdkms(xkslab_lab, xkslab_dsm_key):
    assert xkslab_lab.dsm_call("GET", f"/crypto/v1/keys/{xkslab_dsm_key}")["obj_type"] == "AES"
"""


def test_a_plain_install_runs_the_fixtures_without_sdkms(
    tmp_path: Path, xkslab_wheel: Path, fresh_venv: Callable[[str], Path]
) -> None:
    bin_dir = fresh_venv("venv")
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
        **{name: value for name, value in os.environ.items() if name.startswith("PIP_")},
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        "PIP_CONSTRAINT": str(CONSTRAINTS),
    }

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )

    installed = run(str(bin_dir / "pip"), "install", "-q", str(xkslab_wheel), "pytest")
    assert installed.returncode == 0, installed.stderr
    assert (
        run(str(bin_dir / "python"), "-c", "import sdkms").returncode == 1
    )  # not brought by a plain install

    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_with_xkslab.py").write_text(PROJECT_TESTS)
    (project / "pytest.ini").write_text("[pytest]\nfilterwarnings =\n    error\n")
    sets = [arg for name, value in deadlines.GENEROUS.items() for arg in ("--xkslab-set", f"{name}={value}")]
    suite = run(str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *sets, cwd=project)
    assert suite.returncode == 0, suite.stdout + suite.stderr
    assert "3 passed" in suite.stdout

    bench = run(str(bin_dir / "xkslab"), "bench", "--duration", "1")
    assert bench.returncode == 1
    assert bench.stderr.strip().splitlines() == [
        "Error: xkslab bench needs moto (its KMS is the benchmark's anchor): pip install 'xkslab[bench]'"
    ]
