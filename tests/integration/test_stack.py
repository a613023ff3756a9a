"""The local stack the deploy scripts start: a real broker with the design's topics, a migrated database."""
from __future__ import annotations

import psycopg2
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from services.common.kafka_admin import ensure_topics, wait_ready
from services.common.topics import TOPICS


def test_topics_exist_with_configured_partitions_and_compaction(stack):
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([t.name for t in TOPICS])}
        for spec in TOPICS:
            assert len(described[spec.name]["partitions"]) == 4, spec.name
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "crm.customer-state")])
        assert configs["topic"]["crm.customer-state"]["cleanup.policy"]["value"] == "compact"
        touchpoints = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "crm.touchpoints")])
        assert touchpoints["topic"]["crm.touchpoints"]["retention.ms"]["value"] == "-1"
    finally:
        admin.close()


def test_starting_again_is_harmless(stack):
    assert ensure_topics(stack.kafka_bootstrap, 4) == []
    wait_ready(stack.kafka_bootstrap, 30)
    assert stack.script("kafka.sh", "start").returncode == 0
    assert stack.script("postgres.sh", "start").returncode == 0
    assert stack.script("kafka.sh", "status").returncode == 0
    assert stack.script("postgres.sh", "status").returncode == 0


def test_database_is_migrated(stack):
    dsn = stack.new_database()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM schema_migrations")
        assert ("001_spine.sql",) in cur.fetchall()
        cur.execute("SELECT count(*) FROM customer_view")
        assert cur.fetchone() == (0,)
