"""Run in a separate process by the integration tests: ``create`` makes keys and ciphertexts and writes
them to a JSON file; ``check`` opens the data directory afresh and decrypts every one of them. Two
processes prove that nothing needed for decryption lived only in memory."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

from sqlalchemy import select

from dsm_emulator.authz import system_principal
from dsm_emulator.core import DsmCore
from dsm_emulator.keys import KeySpec
from dsm_emulator.models import Account
from xkslab_shared.config import load_settings

MODES = [
    ("GCM", {"aad": b"context", "tag_len_bits": 128}),
    ("CBC", {}),
    ("CTR", {}),
    ("GCM", {"tag_len_bits": 96}),
]


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


async def main(phase: str, data_dir: Path, out: Path) -> None:
    async with await DsmCore.open(load_settings(data_dir)) as core:
        async with core.sessions() as session:
            p = system_principal(await session.scalar(select(Account.acct_id)))
        if phase == "create":
            records = []
            for size in (128, 192, 256):
                obj = await core.keys.create(
                    p, KeySpec(name=f"kek-{size}-{out.stem}", obj_type="AES", key_size=size)
                )
                for i, (mode, extra) in enumerate(MODES):
                    plain = f"message {i} for {obj.kid}".encode()
                    ct = await core.keys.encrypt(p, obj.kid, mode, plain, **extra)
                    records.append(
                        {
                            "kid": obj.kid,
                            "mode": mode,
                            "plain": b64(plain),
                            "cipher": b64(ct.cipher),
                            "iv": b64(ct.iv),
                            "tag": b64(ct.tag),
                            "aad": b64(extra.get("aad")),
                        }
                    )
            out.write_text(json.dumps(records))
            print(len(records))
        else:
            records = json.loads(out.read_text())
            for r in records:
                plain = await core.keys.decrypt(
                    p,
                    r["kid"],
                    r["mode"],
                    unb64(r["cipher"]),
                    iv=unb64(r["iv"]),
                    tag=unb64(r["tag"]),
                    aad=unb64(r["aad"]),
                )
                assert plain == unb64(r["plain"]), r["kid"]
            print(len(records))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
