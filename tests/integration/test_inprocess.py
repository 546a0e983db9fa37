"""The in-process lab: ``run_lab`` on the test's own event loop (real servers on loopback, free ports, real
boto3 in a worker thread), a second lab on the same data directory refused while it runs, ``xkslab demo``
against its up.json, and ``lab_in_thread`` restarting the same data directory with every key kept."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from tests import deadlines
from tests.net import refused
from xkslab.lab.files import LabError
from xkslab.lab.inprocess import lab_in_thread, run_lab
from xkslab_shared.config import ConfigError


async def test_run_lab_on_the_running_loop_then_restart_in_a_thread(tmp_path: Path) -> None:
    data_dir = tmp_path / "lab"
    async with run_lab(data_dir, deadlines.GENEROUS) as lab:
        assert lab.in_process and lab.data["pid"] == os.getpid()
        assert json.loads((data_dir / "up.json").read_text()) == lab.data
        urls = [lab.dsm_url, lab.data["xks"]["url"], lab.kms_endpoint]
        assert not any(url.endswith(":0") for url in urls)
        kms = lab.kms_client()
        # boto3 blocks: in a worker thread, so that this loop goes on serving the lab it calls.
        blob = (await asyncio.to_thread(kms.encrypt, KeyId=lab.key_id, Plaintext=b"kept"))["CiphertextBlob"]
        key = (await asyncio.to_thread(kms.describe_key, KeyId=lab.key_id))["KeyMetadata"]
        assert (key["Origin"], key["XksKeyConfiguration"]["Id"]) == (
            "EXTERNAL_KEY_STORE",
            lab.data["dsm"]["root_kek_id"],
        )

        with pytest.raises(LabError, match=f"another xkslab up \\(pid {os.getpid()}\\)"):
            async with run_lab(data_dir):
                pass
        assert (data_dir / "up.json").exists()  # the refused start took nothing from the running lab

        demo = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "xkslab",
            "--data-dir",
            str(data_dir),
            "demo",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(demo.communicate(), 120)
        assert demo.returncode == 0, err.decode()
        flow = [row["client_provided_context"]["kmsOperation"] for row in json.loads(out)["audit_rows"]]
        assert flow == ["GenerateDataKey", "Decrypt"]
        kms.close()
    assert not (data_dir / "up.json").exists()
    assert all(refused(url) for url in urls)

    def restart() -> tuple[bytes, list[str], str]:
        with lab_in_thread(data_dir, deadlines.GENEROUS) as again:
            assert again.key_id == lab.key_id and again.custom_key_store_id == lab.custom_key_store_id
            client = again.kms_client()
            try:
                plain = client.decrypt(CiphertextBlob=blob)["Plaintext"]
                keys = [k["KeyId"] for k in client.list_keys()["Keys"]]
            finally:
                client.close()
            return plain, keys, again.kms_endpoint

    plain, keys, endpoint = await asyncio.to_thread(restart)
    assert (plain, keys) == (b"kept", [lab.key_id])
    assert refused(endpoint)
    assert lab_threads() == []


def lab_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("xkslab-lab")]


def test_lab_in_thread_reports_a_failed_start(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "xkslab.toml").write_text("[nonsense]\nsetting = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting nonsense\.setting"):
        with lab_in_thread(tmp_path / "lab"):
            pass
    assert lab_threads() == []
