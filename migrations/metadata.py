"""Every MetaData whose tables the migrations own: what autogenerate compares the database against.

Each service keeps its own models, and the cache generation (shared by all of them) belongs to none;
a table whose metadata is missing here would be proposed for dropping by ``alembic revision
--autogenerate``. tests/unit/test_store.py finds every MetaData the code defines and fails when one is
not listed.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from dsm_emulator import login_store
from dsm_emulator.models import Base
from kms_emulator.models import Base as KmsBase
from xks_frontend import fault_store
from xkslab_shared import generation, nodes

TARGET_METADATA: list[MetaData] = [
    Base.metadata,
    KmsBase.metadata,
    generation.metadata,
    nodes.metadata,
    fault_store.metadata,
    login_store.metadata,
]
