"""The AWS credentials of the lab (its bootstrap calls to the KMS and ``aws_env`` in up.json).

With ``kms.verify_sigv4`` off (the default) they are the fixed pair of bootstrap.py, which the KMS does not
check. With it on, the lab makes an access key of its own for the user ``xkslab-lab`` through the same
code as ``xkslab kms access-key create`` (kms_emulator.access_keys), before the KMS service starts (so no
KMS process has cached the access keys yet: nothing to wait for), and keeps the pair in
``<data-dir>/kms-access-key.json`` (0600, like admin.password; written atomically, never logged). Later
starts reuse the saved pair while the KMS still holds that access key with that secret; when the file is
gone or the key was deleted (``xkslab kms access-key delete``), a new one is made.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from typing import Any

from kms_emulator import access_keys
from kms_emulator.sealing import SealError
from xkslab.lab.bootstrap import FIXED_CREDENTIALS, AwsCredentials
from xkslab.lab.files import LabError
from xkslab_shared.config import Settings

LAB_USER = "xkslab-lab"
ACCESS_KEY_FILE = "kms-access-key.json"


def read_access_key(settings: Settings) -> AwsCredentials | None:
    """The saved pair, or None when there is none (or it cannot be read as one)."""
    path = settings.data_dir / ACCESS_KEY_FILE
    try:
        data: Any = json.loads(path.read_text())
        return AwsCredentials(str(data["access_key_id"]), str(data["secret_access_key"]), signed=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_access_key(settings: Settings, credentials: AwsCredentials, user_name: str = LAB_USER) -> None:
    """0600, atomically (a temporary file renamed over the old one), synced: the only copy of the secret."""
    path = settings.data_dir / ACCESS_KEY_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            data = {
                "user_name": user_name,
                "access_key_id": credentials.access_key_id,
                "secret_access_key": credentials.secret_access_key,
            }
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


async def lab_credentials(settings: Settings) -> AwsCredentials:
    """The pair the lab uses: the fixed one with the check off; with it on, the saved access key while
    the KMS tables still hold it (same secret), else a new access key, saved before it is returned."""
    if not settings.kms.verify_sigv4:
        return FIXED_CREDENTIALS
    saved = await asyncio.to_thread(read_access_key, settings)
    try:
        async with access_keys.open_tables(settings) as (sessions, sealer):
            if saved is not None:
                known = (await access_keys.load_callers(sessions, sealer)).get(saved.access_key_id)
                if known is not None and hmac.compare_digest(
                    known.secret.encode(), saved.secret_access_key.encode()
                ):
                    return saved
            key, secret = await access_keys.create(sessions, sealer, LAB_USER)
    except (access_keys.AccessKeyError, SealError) as exc:
        raise LabError(f"the lab's KMS access key: {exc}") from None
    made = AwsCredentials(key.access_key_id, secret, signed=True)
    await asyncio.to_thread(save_access_key, settings, made)
    return made
