"""The ``crm`` command line: operator and set-up tasks."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services import deadletters, replay
from services import operators_cli, security_cli
from services.common import settings as settings_mod


def _db_migrate(args: argparse.Namespace, cfg: settings_mod.Settings) -> int:
    from services.common.db import migrate

    applied = migrate(cfg.pg_dsn, cfg.pg_service_user or None)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    return 0


def _topics_create(args: argparse.Namespace, cfg: settings_mod.Settings) -> int:
    from services.common.kafka_admin import ensure_topics
    from services.common.kafka_security import KafkaSecurity

    created = ensure_topics(cfg.kafka_bootstrap, args.partitions or cfg.partitions, cfg.replication_factor,
                            KafkaSecurity.from_settings(cfg))
    print(f"topics created: {', '.join(created) if created else 'none (all exist)'}")
    return 0


def _kafka_ready(args: argparse.Namespace, cfg: settings_mod.Settings) -> int:
    from services.common.kafka_admin import wait_ready
    from services.common.kafka_security import KafkaSecurity

    wait_ready(cfg.kafka_bootstrap, args.timeout, KafkaSecurity.from_settings(cfg))
    print(f"kafka at {cfg.kafka_bootstrap} accepts produce and fetch")
    return 0


def _schemas_export(args: argparse.Namespace, cfg: settings_mod.Settings) -> int:
    from events.schema import all_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in all_schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"{len(all_schemas())} schemas written to {out}")
    return 0


def _asyncapi_export(args: argparse.Namespace, cfg: settings_mod.Settings) -> int:
    from events.asyncapi import document, to_yaml

    # the committed document describes the defaults, not this machine's environment
    defaults = settings_mod.Settings.model_fields
    doc = document(args.partitions or defaults["partitions"].default,
                   args.replication_factor or defaults["replication_factor"].default)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n" if out.suffix == ".json" else to_yaml(doc)
    out.write_text(text)
    print(f"AsyncAPI document of {len(doc['channels'])} topics written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crm", description="CRM platform operations")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database tasks").add_subparsers(dest="db_command", required=True)
    db.add_parser("migrate", help="apply schema migrations to CRM_PG_DSN").set_defaults(fn=_db_migrate)

    topics = sub.add_parser("topics", help="Kafka topic tasks").add_subparsers(dest="topics_command", required=True)
    create = topics.add_parser("create", help="create the platform's topics (idempotent)")
    create.add_argument("--partitions", type=int, default=None)
    create.set_defaults(fn=_topics_create)

    kafka = sub.add_parser("kafka", help="Kafka checks").add_subparsers(dest="kafka_command", required=True)
    ready = kafka.add_parser("ready", help="wait until the broker accepts produce and fetch")
    ready.add_argument("--timeout", type=float, default=60.0)
    ready.set_defaults(fn=_kafka_ready)

    schemas = sub.add_parser("schemas", help="event schemas").add_subparsers(dest="schemas_command", required=True)
    export = schemas.add_parser("export", help="write the JSON Schema of every event type")
    export.add_argument("--out", default="docs/schemas")
    export.set_defaults(fn=_schemas_export)

    asyncapi = sub.add_parser("asyncapi", help="the AsyncAPI document of the topics").add_subparsers(
        dest="asyncapi_command", required=True)
    export = asyncapi.add_parser("export", help="write the AsyncAPI 3 document of every topic (YAML, or JSON "
                                                "for a .json file)")
    export.add_argument("--out", default="docs/asyncapi.yaml")
    export.add_argument("--partitions", type=int, default=None, help="default: the settings' default")
    export.add_argument("--replication-factor", type=int, default=None, help="default: the settings' default")
    export.set_defaults(fn=_asyncapi_export)

    deadletters.register(sub)
    replay.register(sub)
    security_cli.register(sub)  # crm keys, crm audit
    operators_cli.register(sub)  # crm operators

    privacy = sub.add_parser("privacy", help="personal data: the master key, erasures").add_subparsers(
        dest="privacy_command", required=True)
    keygen = privacy.add_parser("keygen", help="write a new master key (base64 of 32 random bytes) to FILE, mode 0600")
    keygen.add_argument("file")
    keygen.set_defaults(fn=_privacy_keygen)
    erasures = privacy.add_parser("erasures", help="the erasures carried out (customer, keys shredded, when)")
    erasures.add_argument("--json", action="store_true")
    erasures.set_defaults(fn=_privacy_erasures)
    return parser


def _privacy_keygen(args: argparse.Namespace, cfg: settings_mod.Settings) -> int:
    import os

    from services.common.vault import new_master_key

    path = Path(args.file)
    if path.exists():
        print(f"crm privacy keygen: {path} exists; a master key is never overwritten (every sealed copy "
              "depends on it)", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new_master_key() + "\n")
    print(f"master key written to {path} (mode 0600); set CRM_MASTER_KEY_FILE={path} for every service, and keep "
          "a copy in your secret store: without it no personal data can be read")
    return 0


def _privacy_erasures(args: argparse.Namespace, cfg: settings_mod.Settings) -> int:
    from services.common.db import connect

    conn = connect(cfg.pg_dsn, application_name="crm-cli")
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT customer_id, subjects, requested_by, reason, requested_at, erased_at
                           FROM public.privacy_erasure ORDER BY erased_at""")
            rows = [{"customer_id": c, "subjects": n, "requested_by": b, "reason": r,
                     "requested_at": q.isoformat(), "erased_at": e.isoformat()} for c, n, b, r, q, e in cur.fetchall()]
    finally:
        conn.close()
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['erased_at']}  {r['customer_id']}  keys shredded: {r['subjects']}  by {r['requested_by'] or '-'}"
                  f"  {r['reason'] or ''}")
        print(f"{len(rows)} erasures")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = settings_mod.load()
    try:
        return args.fn(args, cfg)
    except Exception as exc:  # a CLI reports failures in one line, not a traceback
        print(f"crm {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
