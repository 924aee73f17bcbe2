"""Fold stored events into hourly usage rollups, incrementally and exactly once.

The unit of work is an ingest batch. A batch row becomes visible when the request
that stored its events commits, and the fold claims unfolded batches with
`FOR UPDATE SKIP LOCKED`, adds their events into the rollups and marks them folded
in one transaction. So:

- nothing already folded is rescanned (folded batches are never picked again);
- two workers never fold the same batch (the second skips the locked rows);
- a worker killed mid-fold rolls back whole: its batches stay unfolded and the next
  run folds them;
- a late event belongs to a new batch, so it is added to its (possibly old) hour.

Readers see a batch either in the rollups or in the unfolded tail, never both and
never neither, because folding flips both in one commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from metering.fields import SUMMED_FIELDS
from metering.models import IngestBatch

BUCKET = ("customer", "hour", "model", "hardware", "provider")

_FOLD_SQL = f"""
    INSERT INTO metering_usagerollup ({", ".join(BUCKET)}, requests, {", ".join(SUMMED_FIELDS)})
    SELECT customer, date_trunc('hour', "timestamp" AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           model, hardware, provider, count(*), {", ".join(f"sum({c})" for c in SUMMED_FIELDS)}
    FROM metering_event
    WHERE batch_id = ANY(%s)
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY customer COLLATE "C", 2, model COLLATE "C", hardware COLLATE "C",
             provider COLLATE "C"
    ON CONFLICT ({", ".join(BUCKET)}) DO UPDATE SET
        requests = metering_usagerollup.requests + EXCLUDED.requests,
        {", ".join(f"{c} = metering_usagerollup.{c} + EXCLUDED.{c}" for c in SUMMED_FIELDS)}
"""
# ORDER BY above: concurrent folds touching the same buckets lock them in one order.
# Byte order ("C"): the same order as the index's for the identifiers events carry, and
# half the sorting time of the database's default collation.
# Per fold transaction: room to aggregate and sort a round in memory (the default 4 MB
# spills a round of a few hundred thousand events to disk); no JIT compilation, which
# costs more than it saves on statements like these.
_FOLD_SETTINGS_SQL = "SELECT set_config('work_mem', '128MB', true), set_config('jit', 'off', true)"

# The fold finds a batch's events through the BRIN index on batch_id (migration 0003),
# which knows only the block ranges summarised so far; every other range is read
# whole. So new ranges are summarised first: a read of the pages written since the
# last fold, which the fold reads anyway. (Autovacuum does the same where it runs.)
_SUMMARIZE_SQL = """
    SELECT coalesce(sum(brin_summarize_new_values(i.inhrelid::regclass)), 0)
    FROM pg_inherits i WHERE i.inhparent = 'event_batch'::regclass
"""

# SQLite stores datetimes as UTC text, so the hour is a string prefix; "WHERE true"
# is SQLite's required disambiguation of INSERT … SELECT … ON CONFLICT.
_FOLD_SQL_SQLITE = f"""
    INSERT INTO metering_usagerollup ({", ".join(BUCKET)}, requests, {", ".join(SUMMED_FIELDS)})
    SELECT customer, strftime('%%Y-%%m-%%d %%H:00:00', "timestamp"),
           model, hardware, provider, count(*), {", ".join(f"sum({c})" for c in SUMMED_FIELDS)}
    FROM metering_event
    WHERE batch_id IN ({{ids}}) AND true
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT ({", ".join(BUCKET)}) DO UPDATE SET
        requests = requests + excluded.requests,
        {", ".join(f"{c} = {c} + excluded.{c}" for c in SUMMED_FIELDS)}
"""


@dataclass(frozen=True)
class FoldResult:
    batches: int
    rounds: int


def usage_rollup_fold(*, batches_per_round: int = 200, max_rounds: int = 1000) -> FoldResult:
    """Fold every committed, unfolded ingest batch into the hourly rollups.

    Safe to run concurrently and to re-run at any time."""
    total = 0
    rounds = 0
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_SUMMARIZE_SQL)
    while rounds < max_rounds:
        folded = _fold_round(limit=batches_per_round)
        if folded == 0:
            break
        total += folded
        rounds += 1
    return FoldResult(batches=total, rounds=rounds)


def _fold_round(*, limit: int) -> int:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM metering_ingestbatch WHERE folded_at IS NULL "
                    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    [limit],
                )
                ids = [row[0] for row in cursor.fetchall()]
                if not ids:
                    return 0
                cursor.execute(_FOLD_SETTINGS_SQL)
                cursor.execute(_FOLD_SQL, [ids])
                cursor.execute(
                    "UPDATE metering_ingestbatch SET folded_at = %s WHERE id = ANY(%s)",
                    [timezone.now(), ids],
                )
            return len(ids)
        # SQLite: one writer at a time, so no locking is needed beyond the transaction.
        ids = list(
            IngestBatch.objects.filter(folded_at=None)
            .order_by("id")
            .values_list("id", flat=True)[:limit]
        )
        if not ids:
            return 0
        with connection.cursor() as cursor:
            cursor.execute(_FOLD_SQL_SQLITE.format(ids=", ".join(["%s"] * len(ids))), ids)
        IngestBatch.objects.filter(id__in=ids).update(folded_at=timezone.now())
        return len(ids)
