"""The ``xkslab`` command line: set up a data directory, administer the key manager inside it, and run
the services alone or together.

One module per command group; the helpers they share are in ``common`` (which imports none of them).
Every command takes ``--data-dir`` (default ``./.xkslab``, or ``XKSLAB_DATA_DIR``) and ``--set``, before or
after the subcommand, and reads that directory's ``xkslab.toml``; admin commands take ``--json`` for
scripts. Errors are one line on stderr and exit status 1 (click's usage errors: 2), never a traceback
unless XKSLAB_DEBUG=1.
"""

from __future__ import annotations

import click

from xkslab import __version__
from xkslab.cli.approvals import approval
from xkslab.cli.apps import app
from xkslab.cli.audit import audit
from xkslab.cli.bench import bench
from xkslab.cli.certs import certs_command
from xkslab.cli.common import XkslabGroup, add_global_options, global_options
from xkslab.cli.database import db
from xkslab.cli.dsm import dsm
from xkslab.cli.faults import faults
from xkslab.cli.groups import group
from xkslab.cli.init import init
from xkslab.cli.keys import key
from xkslab.cli.kms import kms
from xkslab.cli.lab import demo, down, env, up, wait
from xkslab.cli.seal import seal
from xkslab.cli.users import user
from xkslab.cli.xks import xks


@click.group(cls=XkslabGroup)
@click.version_option(__version__, prog_name="xkslab")
def main() -> None:
    """xkslab: AWS KMS External Key Store testing without a cloud account.

    --data-dir and --set are accepted before or after any subcommand. Errors are one line on stderr
    (exit status 1); XKSLAB_DEBUG=1 shows the traceback of an unexpected one."""


ADMIN = (init, db, seal, audit, group, app, key, user, approval)
LAB = (up, down, wait, env, demo)
for command in (*ADMIN, dsm, xks, kms, *LAB, faults, certs_command, bench):
    main.add_command(command)
main.params.extend(global_options(root=True))
add_global_options(main)
