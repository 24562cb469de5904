"""The ``stigmem-node`` command line: thin calls into the node's use cases.

Human output by default, ``--json`` everywhere, exit 0 on success, 1 on a refused
action, 2 on bad usage or configuration, 70 on an internal error.  Every error prints
one line, never a traceback.  ``--db`` and ``--json`` go before or after the command.

One module per command group, on click: ``serve`` (serve, init, demo), ``info``,
``pull``, ``peers``, ``audit``, ``apikey``, ``keys``, ``token`` and ``facts``;
``_click`` holds the click classes and ``_common`` the plumbing they share.  Each
command is a plain function ``cmd_*(g, **options) -> exit code``, exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from stigmem_node.cli._click import root
from stigmem_node.cli._common import EXIT_FAIL, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, Globals
from stigmem_node.cli.apikey import cmd_apikey_create, cmd_apikey_list, cmd_apikey_revoke
from stigmem_node.cli.audit import cmd_audit_anchor, cmd_audit_export, cmd_audit_list, cmd_audit_tail, cmd_audit_verify
from stigmem_node.cli.backup import cmd_backup
from stigmem_node.cli.doctor import cmd_doctor
from stigmem_node.cli.facts import cmd_facts_add, cmd_facts_list
from stigmem_node.cli.info import cmd_info
from stigmem_node.cli.keys import cmd_keys_rotate
from stigmem_node.cli.migrate import cmd_migrate
from stigmem_node.cli.peers import (
    cmd_peers_add,
    cmd_peers_approve,
    cmd_peers_list,
    cmd_peers_refresh,
    cmd_peers_remove,
    cmd_peers_resume,
    cmd_peers_revoke,
    cmd_peers_show,
    cmd_peers_suspend,
)
from stigmem_node.cli.pull import cmd_pull
from stigmem_node.cli.serve import cmd_demo, cmd_init, cmd_serve
from stigmem_node.cli.token import cmd_token_inspect, cmd_token_mint

__all__ = [
    "EXIT_FAIL",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_USAGE",
    "Globals",
    "cmd_apikey_create",
    "cmd_apikey_list",
    "cmd_apikey_revoke",
    "cmd_audit_anchor",
    "cmd_audit_export",
    "cmd_audit_list",
    "cmd_audit_tail",
    "cmd_audit_verify",
    "cmd_backup",
    "cmd_demo",
    "cmd_doctor",
    "cmd_facts_add",
    "cmd_facts_list",
    "cmd_info",
    "cmd_init",
    "cmd_keys_rotate",
    "cmd_migrate",
    "cmd_peers_add",
    "cmd_peers_approve",
    "cmd_peers_list",
    "cmd_peers_refresh",
    "cmd_peers_remove",
    "cmd_peers_resume",
    "cmd_peers_revoke",
    "cmd_peers_show",
    "cmd_peers_suspend",
    "cmd_pull",
    "cmd_serve",
    "cmd_token_inspect",
    "cmd_token_mint",
    "main",
    "root",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    return root.main(argv, standalone_mode=False)
