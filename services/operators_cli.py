"""``crm operators``: the people who sign in to the operations dashboard.

    crm operators add alice --name "Alice Chen"            # asks for the password twice
    crm operators add wall --password-stdin < password.txt  # scripts: the password on stdin
    crm operators password alice                            # a new password; ends alice's sessions
    crm operators disable alice | enable alice              # disabling ends her sessions at once
    crm operators sessions alice --end                      # sign alice out everywhere
    crm operators list [--json]

Changes are in the audit log under ``cli:<login>``. A signed-in operator's session reads only
(``customers:read``, ``indicators:read``) and expires after ``CRM_SESSION_HOURS``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import datetime

from services.common import audit, operators
from services.common.settings import Settings
from services.security_cli import _actor, transaction


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise operators.InvalidOperator("the two passwords differ")
    return first


def add_command(args: argparse.Namespace, cfg: Settings) -> int:
    try:
        with transaction(cfg) as cur:
            if args.if_missing:
                cur.execute("SELECT 1 FROM operator WHERE username = %s", (args.username.strip().lower(),))
                if cur.fetchone():
                    print(f"operator {args.username} exists; left as it is")
                    return 0
            op = operators.create(cur, args.username, _password(args), display_name=args.name or "",
                                  created_by=_actor())
            audit.record(cur, _actor(), "operator.create", op.username, {"display_name": op.display_name})
    except operators.InvalidOperator as exc:
        print(f"crm operators add: {exc}", file=sys.stderr)
        return 2
    print(f"operator {op.username} created; they sign in at /dashboard (read-only sessions)")
    return 0


def password_command(args: argparse.Namespace, cfg: Settings) -> int:
    try:
        with transaction(cfg) as cur:
            if not operators.set_password(cur, args.username, _password(args)):
                print(f"crm operators password: no operator {args.username}", file=sys.stderr)
                return 3
            audit.record(cur, _actor(), "operator.password", args.username.strip().lower())
    except operators.InvalidOperator as exc:
        print(f"crm operators password: {exc}", file=sys.stderr)
        return 2
    print(f"new password set for {args.username}; their sessions are ended")
    return 0


def _switch(args: argparse.Namespace, cfg: Settings, enable: bool) -> int:
    with transaction(cfg) as cur:
        done = (operators.enable(cur, args.username) if enable
                else operators.disable(cur, args.username, by=f"{_actor()}: operator disabled"))
        if not done:
            print(f"crm operators: no operator {args.username}", file=sys.stderr)
            return 3
        audit.record(cur, _actor(), "operator.enable" if enable else "operator.disable", args.username.lower())
    print(f"operator {args.username} {'enabled' if enable else 'disabled; their sessions are ended'}")
    return 0


def sessions_command(args: argparse.Namespace, cfg: Settings) -> int:
    name = args.username.strip().lower()
    with transaction(cfg) as cur:
        if args.end:
            ended = operators.end_sessions(cur, name, by=f"{_actor()}: sessions ended")
            audit.record(cur, _actor(), "operator.sessions_end", name, {"sessions": ended})
            print(f"{ended} sessions of {name} ended")
            return 0
        cur.execute("""SELECT prefix, created_at, expires_at, last_used_at FROM api_key
                       WHERE operator = %s AND revoked_at IS NULL AND expires_at > now() ORDER BY created_at""",
                    (name,))
        rows = cur.fetchall()
    for prefix, created, expires, used in rows:
        last = f"  last used {used:%Y-%m-%d %H:%M}" if used else ""
        print(f"{prefix}  signed in {created:%Y-%m-%d %H:%M}  expires {expires:%Y-%m-%d %H:%M}{last}")
    print(f"{len(rows)} live sessions")
    return 0


def list_command(args: argparse.Namespace, cfg: Settings) -> int:
    with transaction(cfg) as cur:
        found = operators.list_operators(cur)
    if args.json:
        print(json.dumps([{k: v.isoformat() if isinstance(v, datetime) else v for k, v in o.as_dict().items()}
                          for o in found]))
        return 0
    for o in found:
        state = f"disabled {o.disabled_at:%Y-%m-%d}" if o.disabled_at else "active"
        last = f"last sign-in {o.last_sign_in:%Y-%m-%d %H:%M}" if o.last_sign_in else "never signed in"
        print(f"{o.username:<24} {o.display_name or '-':<24} {state:<20} {last}")
    print(f"{len(found)} operators")
    return 0


def register(sub) -> None:
    ops = sub.add_parser("operators", help="dashboard operators: add, password, disable, sessions, list"
                         ).add_subparsers(dest="operators_command", required=True)
    add = ops.add_parser("add", help="a new operator (asks for the password, or reads it from stdin)")
    add.add_argument("username")
    add.add_argument("--name", help="display name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--if-missing", action="store_true", help="do nothing when the operator exists")
    add.set_defaults(fn=add_command)
    pw = ops.add_parser("password", help="set a new password (ends the operator's sessions)")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(fn=password_command)
    for name, enable in (("disable", False), ("enable", True)):
        cmd = ops.add_parser(name, help=f"{name} an operator" + ("" if enable else " (ends their sessions)"))
        cmd.add_argument("username")
        cmd.set_defaults(fn=lambda a, c, e=enable: _switch(a, c, e))
    sessions = ops.add_parser("sessions", help="an operator's live sessions (--end: sign them out everywhere)")
    sessions.add_argument("username")
    sessions.add_argument("--end", action="store_true")
    sessions.set_defaults(fn=sessions_command)
    lst = ops.add_parser("list", help="every operator")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(fn=list_command)
