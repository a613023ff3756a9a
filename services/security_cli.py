"""``crm keys`` and ``crm audit``: API keys and the audit log from the command line.

The command line talks to PostgreSQL directly (``CRM_PG_DSN``), so an operator can always create
the first admin key, or a new one after the last was revoked. Its changes are in the audit log
under ``cli:<login>``.

    crm keys create --name shop-backend --scopes events:write
    crm keys create --name shop-web --publishable --origin https://shop.example
    crm keys create --name ops --scopes admin --key-file ~/.crm-admin.key   # written 0600, not printed
    crm keys list [--json]
    crm keys revoke <id or prefix>
    crm audit list [--action customer.] [--actor <key id|prefix>] [--target <id>] [--since T] [--json]
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from services.common import apikeys, audit
from services.common.db import TransactionPool
from services.common.settings import Settings


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (a container without a passwd entry)
        return f"cli:uid-{os.getuid()}"


def _pool(cfg: Settings) -> TransactionPool:
    return TransactionPool(cfg.pg_dsn, maxconn=1, application_name="crm-cli")


@contextmanager
def transaction(cfg: Settings):
    """One transaction of the command line (a connection of its own, closed after)."""
    pool = _pool(cfg)
    try:
        with pool.transaction() as cur:
            yield cur
    finally:
        pool.close()


def _write_key_file(path: Path, key: str) -> None:
    """The key into a new file only its owner can read (refuses to overwrite one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")


def _show(key: apikeys.Key) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in key.as_dict().items()}


def create_command(args: argparse.Namespace, cfg: Settings) -> int:
    kind = apikeys.PUBLISHABLE if args.publishable else apikeys.SECRET
    scopes = [s for s in (args.scopes or "").split(",") if s.strip()]
    if args.publishable and not scopes:
        scopes = [apikeys.EVENTS_WRITE]
    if args.key_file and Path(args.key_file).exists():
        print(f"crm keys create: {args.key_file} exists; not overwritten", file=sys.stderr)
        return 1
    pool = _pool(cfg)
    try:
        with pool.transaction() as cur:
            key, secret = apikeys.create(cur, name=args.name, scopes=scopes, kind=kind, origins=args.origin,
                                         rate_per_s=args.rate, burst=args.burst, created_by=_actor())
            audit.record(cur, _actor(), "key.create", key.id, {"prefix": key.prefix, "name": key.name,
                                                               "kind": key.kind, "scopes": list(key.scopes)})
            if args.key_file:  # in the transaction: no key is created that nobody holds
                _write_key_file(Path(args.key_file), secret)
    except apikeys.InvalidKeySpec as exc:
        print(f"crm keys create: {exc}", file=sys.stderr)
        return 2
    finally:
        pool.close()
    if args.json:
        print(json.dumps({**_show(key), **({} if args.key_file else {"key": secret})}))
    else:
        print(f"created {key.kind} key {key.id} ({key.prefix}) {key.name!r}: scopes {', '.join(key.scopes)}"
              + (f"; origins {', '.join(key.allowed_origins)}" if key.allowed_origins else ""))
        if not args.key_file:
            print(secret)
    if args.key_file:
        print(f"the key is in {args.key_file} (mode 0600); it is not stored anywhere else", file=sys.stderr)
    else:
        print("warning: this is the only time the key is shown; it is not stored (only its hash is)",
              file=sys.stderr)
    return 0


def list_command(args: argparse.Namespace, cfg: Settings) -> int:
    pool = _pool(cfg)
    try:
        with pool.transaction() as cur:
            keys = apikeys.list_keys(cur, include_revoked=not args.live)
            sessions = {key.id: apikeys.live_sessions_of(cur, key.id) for key in keys}
    finally:
        pool.close()
    if args.json:
        for key in keys:
            print(json.dumps({**_show(key), "sessions": [_show(s) for s in sessions[key.id]]}))
        return 0
    if not keys:
        print("no API keys (create one with: crm keys create --name NAME --scopes admin)")
        return 0
    print(f"{'id':38} {'prefix':10} {'kind':11} {'status':8} {'scopes':34} {'last used':20} name")
    for key in keys:
        status = "revoked" if key.revoked_at else "live"
        used = key.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if key.last_used_at else "-"
        print(f"{key.id:38} {key.prefix:10} {key.kind:11} {status:8} {','.join(key.scopes):34} {used:20} {key.name}")
        for session in sessions[key.id]:  # a session made from the key belongs to it, and ends with it
            print(f"  session {session.prefix} expires {session.expires_at:%Y-%m-%d %H:%M:%S}")
    return 0


def revoke_command(args: argparse.Namespace, cfg: Settings) -> int:
    pool = _pool(cfg)
    try:
        with pool.transaction() as cur:
            key, revoked = apikeys.revoke(cur, args.key, revoked_by=_actor())
            if revoked:
                audit.record(cur, _actor(), "key.revoke", key.id, {"prefix": key.prefix, "name": key.name})
    finally:
        pool.close()
    if key is None:
        print(f"crm keys revoke: no API key {args.key!r}", file=sys.stderr)
        return 1
    if not revoked:
        print(f"key {key.id} ({key.prefix}) was revoked already, at {key.revoked_at:%Y-%m-%d %H:%M:%S}")
        return 0
    print(f"revoked key {key.id} ({key.prefix}) {key.name!r}; every process refuses it within "
          f"{cfg.auth_cache_s:g} s (CRM_AUTH_CACHE_S)")
    return 0


def verify_command(args: argparse.Namespace, cfg: Settings) -> int:
    """Exit 0 when the key in the file is live, 3 when it is not (deploy/services.sh checks its demo
    keys so), 1 when the database cannot say."""
    try:
        presented = Path(args.key_file).read_text().strip()
    except OSError as exc:
        print(f"crm keys verify: {exc}", file=sys.stderr)
        return 1
    pool = _pool(cfg)
    try:
        with pool.transaction() as cur:
            key = apikeys.verify(cur, presented)
    finally:
        pool.close()
    if key is None:
        print(f"the key in {args.key_file} is not a live key of this database", file=sys.stderr)
        return 3  # apart from 1 (could not ask), so a script knows to make a new key
    print(f"live {key.kind} key {key.id} ({key.prefix}) {key.name!r}: scopes {', '.join(key.scopes)}")
    return 0


def _time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None


def audit_list_command(args: argparse.Namespace, cfg: Settings) -> int:
    pool = _pool(cfg)
    try:
        with pool.transaction() as cur:
            rows = audit.query(cur, action=args.action, actor=args.actor, target=args.target, since=args.since,
                               until=args.until, limit=args.limit)
    finally:
        pool.close()
    for row in rows:
        if args.json:
            print(json.dumps(row, default=str, ensure_ascii=False))
        else:
            print(f"{row['id']:>8} {row['at']:%Y-%m-%d %H:%M:%S} {row['action']:24} {row['target'] or '-':40} "
                  f"{row['actor_name']}" + (f" from {row['request_ip']}" if row["request_ip"] else "")
                  + (f" {json.dumps(row['details'], default=str, ensure_ascii=False)}" if row["details"] else ""))
    if not rows and not args.json:
        print("no audit entries match")
    return 0


def register(subparsers) -> None:
    """Add the ``keys`` and ``audit`` command groups to the ``crm`` parser."""
    keys = subparsers.add_parser("keys", help="API keys of the collector and the query API").add_subparsers(
        dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; it is shown once and never stored")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--scopes", default="", help=f"comma-separated, of: {', '.join(apikeys.SCOPES)} "
                                                     "(admin implies every scope)")
    create.add_argument("--publishable", action="store_true",
                        help="a browser key: events:write, web.* events only, from the --origin pages only")
    create.add_argument("--origin", action="append", default=[], metavar="URL",
                        help="an origin (https://shop.example) a publishable key may be used from (repeatable)")
    create.add_argument("--rate", type=float, default=None, help="requests (API) or events (collector) per "
                                                                 "second; default CRM_RATE_LIMIT_PER_S")
    create.add_argument("--burst", type=int, default=None, help="burst; default CRM_RATE_LIMIT_BURST")
    create.add_argument("--key-file", default=None, metavar="PATH",
                        help="write the key to this new file (mode 0600) instead of printing it")
    create.add_argument("--json", action="store_true", help="one JSON object (with the key, unless --key-file)")
    create.set_defaults(fn=create_command)

    ls = keys.add_parser("list", help="every key (never a secret: none is stored)")
    ls.add_argument("--live", action="store_true", help="leave out revoked keys")
    ls.add_argument("--json", action="store_true", help="one JSON object per key and line")
    ls.set_defaults(fn=list_command)

    revoke = keys.add_parser("revoke", help="revoke a key (refused everywhere within CRM_AUTH_CACHE_S seconds)")
    revoke.add_argument("key", metavar="ID|PREFIX")
    revoke.set_defaults(fn=revoke_command)

    verify = keys.add_parser("verify", help="exit 0 when the key in a file is live, 3 when it is not")
    verify.add_argument("--key-file", required=True, metavar="PATH")
    verify.set_defaults(fn=verify_command)

    log = subparsers.add_parser("audit", help="the audit log (append-only)").add_subparsers(
        dest="audit_command", required=True)
    ls = log.add_parser("list", help="audit entries, newest first")
    ls.add_argument("--action", help="an action (customer.read) or a prefix ending in . or * (customer.)")
    ls.add_argument("--actor", help="a key id, a key prefix or an actor name (cli:alice)")
    ls.add_argument("--target", help="a customer id, key id or subscription id")
    ls.add_argument("--since", type=_time, help="ISO 8601 time, inclusive")
    ls.add_argument("--until", type=_time, help="ISO 8601 time, exclusive")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON object per entry and line")
    ls.set_defaults(fn=audit_list_command)
