"""xks_wire.URI_PATH (possessive, lazy prefix) matches exactly what the greedy pattern it replaced matched,
with the same groups: every caller reads ``prefix``, ``health``, ``key`` and ``op`` off the match."""

from __future__ import annotations

import random
import re

import pytest

from xkslab_shared import xks_wire

# The pattern as it was before: the reference.
GREEDY = re.compile(
    r"(?P<prefix>(?:/[A-Za-z0-9_-]+)*)/kms/xks/v1/"
    r"(?:(?P<health>health)|keys/(?P<key>[A-Za-z0-9._-]{1,128})/(?P<op>metadata|encrypt|decrypt))"
)
PIECES = [
    "kms",
    "xks",
    "v1",
    "keys",
    "health",
    "encrypt",
    "decrypt",
    "metadata",
    "a",
    "k.1",
    "",
    "x-y_Z",
    "é",
    ".",
]


def _same(path: str) -> None:
    old, new = GREEDY.fullmatch(path), xks_wire.URI_PATH.fullmatch(path)
    assert (old is None) == (new is None), path
    if old is not None and new is not None:
        assert old.groupdict() == new.groupdict(), path
        assert old.span("prefix") == new.span("prefix"), path


@pytest.mark.parametrize(
    "path",
    [
        "/kms/xks/v1/health",
        "/kms/xks/v1/keys/k1/encrypt",
        "/crypto/v1/apps/0b0f7a1e-5d2c-4c8e-9a8d-3f1e2b7c9d10/aws/kms/xks/v1/keys/6c1f8b2a-4e2d/decrypt",
        "/kms/xks/v1/keys/kms/xks/v1/health",
        "/kms/xks/v1/kms/xks/v1/keys/health/metadata",
        "/p/kms/xks/v1/keys/a.b/kms/xks/v1/keys/c/encrypt",
        "/kms/xks/v1/keys/" + "k" * 128 + "/encrypt",
        "/kms/xks/v1/keys/" + "k" * 129 + "/encrypt",
        "//kms/xks/v1/health",
        "/a//kms/xks/v1/health",
        "/kms/xks/v1/keys//encrypt",
        "/kms/xks/v1/health/",
        "kms/xks/v1/health",
        "/a.b/kms/xks/v1/health",
    ],
)
def test_edge_paths_match_as_before(path: str) -> None:
    _same(path)


def test_generated_paths_match_as_before() -> None:
    rng = random.Random(22)
    matched = 0
    for _ in range(20_000):
        parts = [rng.choice(PIECES) for _ in range(rng.randint(0, 9))]
        path = "".join("/" + p for p in parts)
        if rng.random() < 0.5:  # most random paths match nothing: make half of them end like an operation
            tail = rng.choice(
                ["/kms/xks/v1/health", "/kms/xks/v1/keys/k/encrypt", "/kms/xks/v1/keys/kms/decrypt"]
            )
            path += tail
        _same(path)
        matched += GREEDY.fullmatch(path) is not None
    assert matched > 2_000  # the comparison covered matches, not only refusals
