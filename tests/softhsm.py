"""SoftHSM2 test helpers and fixtures, shared by any test module that needs a PKCS#11 token.

Reuse from tests/conftest.py or a test module by binding the fixtures at module level::

    from tests import softhsm
    softhsm_dir = softhsm.softhsm_dir
    softhsm_token = softhsm.softhsm_token

(``pytest_plugins = ["tests.softhsm"]`` also works, but only if nothing imported tests.softhsm
earlier: pytest then warns that it cannot rewrite it, and warnings are errors in this project.)

Why it is built this way (SoftHSM2 2.6.1 + python-pkcs11 0.10.1):

* python-pkcs11 loads libsofthsm2 once per process (``pkcs11.lib`` caches by path) and SoftHSM
  reads ``SOFTHSM2_CONF`` and scans the token directory only in ``C_Initialize``. So the config
  location must be in ``os.environ`` before the first load, and a per-test ``monkeypatch.setenv``
  of a per-test directory would be ignored after the first test. Hence ONE session-scoped token
  directory whose config is put in ``os.environ`` once (``softhsm_dir``), and a unique token label
  per test (``softhsm_token``) for isolation.
* A token created by ``softhsm2-util`` after ``C_Initialize`` is invisible to the running
  process. ``make_token`` therefore re-initialises the library (``C_Finalize`` + ``C_Initialize``,
  which also re-reads ``SOFTHSM2_CONF``) when the new label is not visible yet. That kills every
  open PKCS#11 session in the process, so create tokens before opening sealers (function-scoped
  fixtures do); a sealer that does outlive it recovers through its one reopen-and-retry.
* If softhsm2-util, the library or python-pkcs11 is missing the tests FAIL rather than skip: CI
  installs SoftHSM2, and a silent skip would hide the HSM path going untested.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dsm_emulator.sealing import Pkcs11SealConfig

__all__ = [
    "INIT_SCRIPT",
    "SOFTHSM_LIBRARY",
    "SoftHsmToken",
    "make_token",
    "make_token_visible",
    "require_softhsm",
    "run_init_script",
    "softhsm_dir",
    "softhsm_token",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
INIT_SCRIPT = REPO_ROOT / "scripts" / "softhsm-init.sh"
SOFTHSM_LIBRARY = Path(os.environ.get("XKSLAB_SOFTHSM_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so"))
SO_PIN = "5678"


@dataclass(frozen=True)
class SoftHsmToken:
    """An initialised token; the PINs are random per token so leak checks can search for them."""

    conf: Path
    library: Path
    label: str
    pin: str = field(repr=False)
    so_pin: str = field(repr=False, default=SO_PIN)

    def seal_config(self, key_label: str = "xkslab-seal", pin: str | None = None) -> Pkcs11SealConfig:
        return Pkcs11SealConfig(
            library=self.library,
            token_label=self.label,
            pin=self.pin if pin is None else pin,
            key_label=key_label,
        )

    @contextmanager
    def session(self) -> Iterator[Any]:
        """A logged-in session for inspecting the token behind the sealer's back.

        PKCS#11 logins are per process, so do not use this while a sealer on the same token is open.
        """
        import pkcs11

        token = pkcs11.lib(str(self.library)).get_token(token_label=self.label)
        session = token.open(rw=True, user_pin=self.pin)
        try:
            yield session
        finally:
            session.close()


def require_softhsm() -> None:
    """Fail (not skip) when the SoftHSM2 toolchain is absent."""
    if shutil.which("softhsm2-util") is None:
        pytest.fail("softhsm2-util not found: install SoftHSM2 (apt-get install softhsm2)", pytrace=False)
    if not SOFTHSM_LIBRARY.exists():
        pytest.fail(
            f"SoftHSM2 library {SOFTHSM_LIBRARY} not found (set XKSLAB_SOFTHSM_LIBRARY)", pytrace=False
        )
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        pytest.fail("python-pkcs11 is not installed: pip install 'xkslab[pkcs11]'", pytrace=False)


def run_init_script(directory: Path, label: str, pin: str, so_pin: str = SO_PIN) -> Path:
    """Run scripts/softhsm-init.sh and return the softhsm2.conf it wrote."""
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    result = subprocess.run(
        [str(INIT_SCRIPT), "--dir", str(directory), "--label", label, "--pin", pin, "--so-pin", so_pin],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"softhsm-init.sh failed ({result.returncode}): {result.stderr.strip()}", pytrace=False)
    prefix = "export SOFTHSM2_CONF="
    lines = [line for line in result.stdout.splitlines() if line.startswith(prefix)]
    assert lines, f"softhsm-init.sh printed no export line: {result.stdout!r}"
    conf = Path(directory).resolve() / "softhsm2.conf"
    assert conf.is_file()
    return conf


def make_token_visible(library: Path, label: str) -> None:
    """Make a token created by softhsm2-util visible to this process's SoftHSM instance."""
    import pkcs11

    lib = pkcs11.lib(str(library))  # a first load runs C_Initialize now and sees the token already
    if not any(True for _ in lib.get_tokens(token_label=label)):
        lib.reinitialize()
    lib.get_token(token_label=label)  # raises NoSuchToken if it is still not there


def make_token(directory: Path, label: str | None = None, pin: str | None = None) -> SoftHsmToken:
    """Initialise a fresh token with a unique label in the session's token directory."""
    label = label or f"t-{secrets.token_hex(8)}"
    pin = pin or f"pin-{secrets.token_hex(6)}"
    conf = run_init_script(directory, label, pin)
    if os.environ.get("SOFTHSM2_CONF") != str(conf):
        pytest.fail(
            f"SOFTHSM2_CONF is {os.environ.get('SOFTHSM2_CONF')!r}, not {conf}: use the softhsm_dir fixture",
            pytrace=False,
        )
    make_token_visible(SOFTHSM_LIBRARY, label)
    return SoftHsmToken(conf=conf, library=SOFTHSM_LIBRARY, label=label, pin=pin)


@pytest.fixture(scope="session")
def softhsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One token directory for the whole run, with SOFTHSM2_CONF set in os.environ for its duration.

    Set once and before any test loads libsofthsm2, because SoftHSM only reads the variable in
    C_Initialize (see the module docstring); restored at the end of the session.
    """
    require_softhsm()
    directory = tmp_path_factory.mktemp("softhsm")
    # Writes softhsm2.conf (and a placeholder token) so the config exists before the first load.
    conf = run_init_script(directory, label="xkslab-session", pin=f"pin-{secrets.token_hex(6)}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        yield directory


@pytest.fixture
def softhsm_token(softhsm_dir: Path) -> SoftHsmToken:
    """A fresh, empty token with a unique label and a random user PIN (no sealing key yet)."""
    return make_token(softhsm_dir)
