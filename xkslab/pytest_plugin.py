"""pytest fixtures that give a test suite a running xkslab: DSM, XKS proxy and KMS emulator, bootstrapped,
on free ports, in a temporary data directory, one lab per session (so one per pytest-xdist worker).

Installed with xkslab (entry point ``pytest11``), so the fixtures need no set-up; without the entry
point, ``-p xkslab.pytest_plugin`` or ``pytest_plugins = ["xkslab.pytest_plugin"]`` loads them.

- ``xkslab_lab`` (session): an ``XkslabLab``: the lab's settings, ``up.json`` data and ready clients.
- ``xkslab_kms_key`` (function): the id of a fresh XKS-backed KMS key on the lab's key store.
- ``xkslab_dsm_key`` (function): the kid of a fresh AES-256 key in the DSM.
- ``xkslab_fault`` (function): ``xkslab_fault(kind, **fields)`` sets a fault on the lab's XKS proxy and
  returns its id; the faults it set are cleared after the test, passed or failed. Within a test,
  ``with xkslab_lab.fault(kind, **fields) as fault_id:`` does the same for a block (``LabInfo.fault``).

Options: ``--xkslab-in-process`` (the services on an event loop in a thread of the test process instead
of ``xkslab up`` in child processes), ``--xkslab-database-url`` (a PostgreSQL server: each lab gets a
fresh database there, dropped at the end), ``--xkslab-set NAME=VALUE`` (any lab setting).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Only the light part at import: pytest loads this plugin in every run where xkslab is installed, and the
# services (imported by the code that runs a lab) cost a second; they are imported when a lab starts.
from xkslab.lab.info import LabInfo

__all__ = ["XkslabLab"]

# Whether this session logged in with the sdkms SDK (pytest_unconfigure below).
_sdkms_used = False

# What the lab's own root KEK allows: what KMS needs of an XKS key (GetKeyMetadata checks ENCRYPT and
# DECRYPT), and wrapping for tests that use the key as a KEK in the DSM directly.
KEY_OPS = ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "APPMANAGEABLE"]
DSM_TIMEOUT_S = 60.0  # a bound for a stalled machine, not a budget


class XkslabLab(LabInfo):
    """A running lab (``LabInfo``: ``data``, ``settings``, ``kms_endpoint``, ``xks_uri``, ``xks_credential``,
    ``ca_file``...) with clients made on first use and kept for the session."""

    @functools.cached_property
    def kms(self) -> Any:
        """A boto3 KMS client pointed at the lab, with its region and credentials."""
        return self.kms_client()

    @functools.cached_property
    def sdkms(self) -> Any:
        """An ``sdkms.v1.ApiClient`` logged in as the lab's client app (``xkslab-client``, default group)."""
        import sdkms.v1 as sdk

        cfg = sdk.Configuration()
        cfg.host = self.dsm_url
        cfg.app_api_key = self.api_key
        return _authorized(sdk, sdk.ApiClient(configuration=cfg))

    @functools.cached_property
    def sdkms_admin(self) -> Any:
        """An ``sdkms.v1.ApiClient`` logged in as the account administrator, with the account selected."""
        import sdkms.v1 as sdk

        cfg = sdk.Configuration()
        cfg.host = self.dsm_url
        cfg.username, cfg.password = self.data["dsm"]["admin_email"], self.data["dsm"]["admin_password"]
        client = _authorized(sdk, sdk.ApiClient(configuration=cfg))
        acct_id = next(iter(sdk.UsersApi(api_client=client).get_user_account()))
        sdk.AuthenticationApi(api_client=client).select_account(sdk.SelectAccountRequest(acct_id=acct_id))
        return client

    def new_dsm_key(self, name: str | None = None, key_size: int = 256) -> str:
        """A new AES key made by the client app in the default group (where the proxy's app may use it);
        returns its kid."""
        body = {
            "name": name or f"xkslab-test-{uuid.uuid4().hex}",
            "obj_type": "AES",
            "key_size": key_size,
            "key_ops": KEY_OPS,
        }
        return str(self.dsm_call("POST", "/crypto/v1/keys", body)["kid"])

    def dsm_call(self, method: str, path: str, body: Any = None) -> Any:
        """One call of the DSM REST API as the lab's client app (its API key, session-less), with the
        standard library: the fixtures that need no ``sdkms`` SDK work where it is not installed (it
        comes with ``xkslab[pytest]``). Returns the JSON answer (None when empty); an HTTP error raises
        ``urllib.error.HTTPError``."""
        request = urllib.request.Request(  # noqa: S310 (the lab's own URL)
            self.dsm_url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Basic {self.api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=DSM_TIMEOUT_S) as answer:  # noqa: S310
            raw = answer.read()
        return json.loads(raw) if raw else None

    def new_kms_key(self, description: str = "xkslab test key") -> str:
        """A new KMS key on the lab's external key store, backed by a new DSM key; returns its KeyId."""
        created = self.kms.create_key(
            Origin="EXTERNAL_KEY_STORE",
            CustomKeyStoreId=self.custom_key_store_id,
            XksKeyId=self.new_dsm_key(),
            Description=description,
        )
        return str(created["KeyMetadata"]["KeyId"])

    def close(self) -> None:
        for name in ("kms", "sdkms", "sdkms_admin"):
            client = self.__dict__.pop(name, None)
            close = getattr(client, "close", None)
            if close is not None:
                close()


def _authorized(sdk: Any, client: Any) -> Any:
    global _sdkms_used
    _sdkms_used = True
    auth = sdk.AuthenticationApi(api_client=client).authorize()
    client.configuration.api_key["Authorization"] = auth.access_token
    client.configuration.api_key_prefix["Authorization"] = "Bearer"
    return client


def pytest_unconfigure(config: pytest.Config) -> None:
    # The sdkms SDK makes a ThreadPool when it is imported (a class attribute of ApiClient) and never
    # closes it: at exit every run that used the SDK printed an "unclosed running multiprocessing pool"
    # ResourceWarning. Nothing runs after unconfigure, so it is closed here.
    api_client = sys.modules.get("sdkms.v1.api_client")
    pool = getattr(getattr(api_client, "ApiClient", None), "pool", None)
    if pool is not None and _sdkms_used:
        pool.close()
        pool.join()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xkslab", "xkslab lab fixtures")
    group.addoption(
        "--xkslab-in-process",
        action="store_true",
        default=False,
        help="run the lab's services in the test process (a background thread) instead of `xkslab up`",
    )
    group.addoption(
        "--xkslab-database-url",
        default=None,
        metavar="URL",
        help="a postgresql+asyncpg:// URL: each lab gets a fresh database on that server (default: SQLite)",
    )
    group.addoption(
        "--xkslab-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a lab setting (as `xkslab --set`); may be given more than once",
    )


def _overrides(config: pytest.Config) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in config.getoption("xkslab_set"):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise pytest.UsageError(f"--xkslab-set takes NAME=VALUE, not {item!r}")
        found[name.strip()] = value
    return found


@pytest.fixture(scope="session")
def xkslab_lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XkslabLab]:
    """A lab for this session (this worker under pytest-xdist), stopped with everything it started when
    the session ends."""
    from xkslab.lab.inprocess import lab_in_thread
    from xkslab.lab.process import fresh_database, lab_process

    config = request.config
    # Per worker: xdist gives each worker its own base temporary directory.
    base = tmp_path_factory.mktemp("xkslab")
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    overrides = _overrides(config)
    with contextlib.ExitStack() as stack:
        server_url = config.getoption("xkslab_database_url")
        if server_url:
            overrides["database.url"] = stack.enter_context(fresh_database(server_url, tag=worker))
        if config.getoption("xkslab_in_process"):
            info = stack.enter_context(lab_in_thread(base / "data", overrides))
        else:
            info = stack.enter_context(lab_process(base / "data", overrides, log_file=base / "up.log"))
        lab = XkslabLab(info.data_dir, info.settings, info.data, info.in_process)
        stack.callback(lab.close)
        yield lab


@pytest.fixture
def xkslab_kms_key(xkslab_lab: XkslabLab, request: pytest.FixtureRequest) -> Iterator[str]:
    """The KeyId of a new XKS-backed KMS key (Origin EXTERNAL_KEY_STORE, on the lab's key store); its
    deletion is scheduled after the test, so later tests see it PendingDeletion, not in use."""
    key_id = xkslab_lab.new_kms_key(f"xkslab_kms_key for {request.node.nodeid}"[:8192])
    yield key_id
    from botocore.exceptions import ClientError

    with contextlib.suppress(ClientError):  # the test may have scheduled it already
        xkslab_lab.kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)


@pytest.fixture
def xkslab_dsm_key(xkslab_lab: XkslabLab) -> Iterator[str]:
    """The kid of a new AES-256 key in the lab's DSM (made by the client app, in the default group),
    deleted after the test."""
    kid = xkslab_lab.new_dsm_key()
    yield kid
    try:
        xkslab_lab.dsm_call("DELETE", f"/crypto/v1/keys/{kid}")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:  # the test may have deleted it already
            raise


@pytest.fixture
def xkslab_fault(xkslab_lab: XkslabLab) -> Iterator[Callable[..., str]]:
    """A function that sets one fault on the lab's XKS proxy, ``xkslab_fault("error",
    error_name="KeyNotFoundException", kms_operation="Encrypt")``, and returns its id; after the test,
    passed or failed, exactly the faults it set are cleared (``xkslab_lab.fault(...)`` is the same as a
    ``with`` block)."""
    with contextlib.ExitStack() as stack:

        def apply(kind: str, **fields: Any) -> str:
            return stack.enter_context(xkslab_lab.fault(kind, **fields))

        yield apply
