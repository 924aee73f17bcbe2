"""Metering data: sources, their API keys, and the events they send.

The event table is the system of record for billing. On PostgreSQL it is
partitioned by month on `timestamp` (see migrations/0001), so old months can be
detached and archived as whole tables; de-duplication cannot rely on a unique
index over a partitioned table (it would have to include the partition key), so
idempotency keys live in their own unpartitioned table, `EventKey`.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import ClassVar

from django.db import models
from django.utils import timezone

SCOPE_INGEST = "ingest"
SCOPE_READ = "read"
SCOPE_BILLING = "billing"
ALL_SCOPES = (SCOPE_INGEST, SCOPE_READ, SCOPE_BILLING)
DEFAULT_SCOPES = (SCOPE_INGEST, SCOPE_READ)

API_KEY_PREFIX = "ib"


class Source(models.Model):
    """A product that sends events; it owns API keys."""

    name = models.CharField(max_length=128, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """An API key, stored as a SHA-256 hash of its secret.

    Keys are 256-bit random tokens, so a fast hash is enough: there is nothing to
    brute-force that a slow KDF would protect. `prefix` is the public part that
    finds the row; the secret is only ever compared by hash.
    """

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=128, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    # last_used_at is refreshed at most this often, so a busy key costs no write per request.
    LAST_USED_RESOLUTION_SECONDS: ClassVar[int] = 300

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{API_KEY_PREFIX}_{self.prefix}_… ({self.source.name})"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """Return (raw_key, prefix, secret)."""
        prefix = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        return f"{API_KEY_PREFIX}_{prefix}_{secret}", prefix, secret

    @staticmethod
    def split(raw_key: str) -> tuple[str, str] | None:
        parts = raw_key.split("_", 2)
        if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not parts[1] or not parts[2]:
            return None
        return parts[1], parts[2]


class IngestBatch(models.Model):
    """One accepted ingest request. Its events carry its id.

    Rollups fold whole batches: a batch row becomes visible only when the
    transaction that stored its events commits, so a folder that takes unfolded
    batches never sees half of a request and never misses a slow one.
    """

    source = models.ForeignKey(Source, on_delete=models.PROTECT, related_name="+")
    received_at = models.DateTimeField(default=timezone.now)
    folded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(
                fields=["id"], name="ingestbatch_unfolded", condition=models.Q(folded_at=None)
            )
        ]

    def __str__(self) -> str:
        return f"batch {self.pk} ({'folded' if self.folded_at else 'unfolded'})"


class EventKey(models.Model):
    """The idempotency key of every stored event, across all partitions.

    `key_hash` is a 128-bit digest of (source, CloudEvents source, event id): a
    fixed-width key keeps the unique index small at hundreds of millions of rows.
    `content_hash` tells a harmless retry from a conflicting re-send.
    """

    key_hash = models.UUIDField(primary_key=True)
    content_hash = models.UUIDField()

    def __str__(self) -> str:
        return str(self.key_hash)


class Event(models.Model):
    """One inference request's usage. Written by metering.ingest, never by the ORM.

    On PostgreSQL the table differs from what this model would make (migrations 0001,
    0003, 0004): partitioned by month, no index on `id` (unique by its sequence; no
    read goes by it), and a BRIN index on `batch_id`. SQLite gets the plain table.
    """

    id = models.BigAutoField(primary_key=True)
    batch = models.ForeignKey(IngestBatch, on_delete=models.DO_NOTHING, db_constraint=False)
    source = models.ForeignKey(Source, on_delete=models.DO_NOTHING, db_constraint=False)
    key_hash = models.UUIDField()
    event_id = models.CharField(max_length=128)
    ce_source = models.CharField(max_length=512, blank=True, default="")
    ce_type = models.CharField(max_length=256, blank=True, default="")
    customer = models.CharField(max_length=128)
    timestamp = models.DateTimeField()
    model = models.CharField(max_length=256)
    provider = models.CharField(max_length=128, blank=True, default="")
    hardware = models.CharField(max_length=128, blank=True, default="")
    input_tokens = models.BigIntegerField(default=0)
    cache_read_input_tokens = models.BigIntegerField(default=0)
    cache_write_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_output_tokens = models.BigIntegerField(default=0)
    gpu_seconds = models.DecimalField(max_digits=24, decimal_places=6, default=0)
    latency_ms = models.IntegerField(null=True, blank=True)
    properties = models.JSONField(default=dict)

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["customer", "timestamp"], name="event_customer_ts"),
            models.Index(fields=["batch"], name="event_batch"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.customer}, {self.model})"


class UsageRollup(models.Model):
    """Hourly usage per customer × model × hardware × provider, folded from events.

    Written only by metering.rollup, which folds whole committed ingest batches, so
    a batch's events are either all here (its batch is folded) or all in the tail.
    """

    customer = models.CharField(max_length=128)
    hour = models.DateTimeField()
    model = models.CharField(max_length=256)
    hardware = models.CharField(max_length=128, blank=True, default="")
    provider = models.CharField(max_length=128, blank=True, default="")
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cache_read_input_tokens = models.BigIntegerField(default=0)
    cache_write_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_output_tokens = models.BigIntegerField(default=0)
    gpu_seconds = models.DecimalField(max_digits=28, decimal_places=6, default=0)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["customer", "hour", "model", "hardware", "provider"],
                name="usagerollup_unique_bucket",
            )
        ]

    def __str__(self) -> str:
        return f"{self.customer} {self.hour:%Y-%m-%d %H}h {self.model}"
