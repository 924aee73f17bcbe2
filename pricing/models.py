"""Pricing data: what compute costs the seller, and each customer's margin.

- `CostRate`: what the seller pays, per model and token class (USD per token) or per
  hardware type (USD per GPU-hour with a utilization factor), each from an instant
  (`effective_from`) on. A usage row is costed at the rate in force at its time; a
  new rate for a key never takes effect before the current hour once a rate for that
  key is in force (pricing.services.cost_rate_create), so past cost is never rewritten.
- `MarginSnapshot`: revenue, cost and margin of one customer in one billing period,
  recomputed by pricing.services.margins_refresh (one row per customer × period).
- `MarginFlag`: a customer flagged in a period, kept with when it was raised and
  cleared; finance is told once per raise.
- `ReferencePlan`: the editable plan whose usage-based amount flagged customers are
  compared with.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

PER_TOKEN = {"max_digits": 30, "decimal_places": 18}  # $0.000000075 keeps 9 spare places
PER_MILLION_TOKENS = {"max_digits": 30, "decimal_places": 12}  # input only: stored per token
GPU_HOUR_RATE = {"max_digits": 20, "decimal_places": 6}
UTILIZATION = {"max_digits": 5, "decimal_places": 4}
# 12 places keep a per-token price times a token count exact; 18 integer digits leave room
# for sums over many rows.
MONEY = {"max_digits": 30, "decimal_places": 12}
QUANTITY = {"max_digits": 30, "decimal_places": 6}
MILLION = Decimal(1_000_000)
SECONDS_PER_HOUR = Decimal(3600)
# What a cost rate is a price of; a new price for a key is a new rate from a later instant.
RATE_KEY_FIELDS = ("kind", "model", "provider", "token_class", "hardware")


class CostRate(models.Model):
    """One price the seller pays, from `effective_from` until the next rate of the same key.

    Token rates are keyed by (model, provider, token class); an empty provider matches
    any provider, and a rate naming the event's provider wins over it. GPU rates are
    keyed by hardware: a GPU-second served costs gpu_hour_rate / 3600 / utilization,
    since idle capacity is paid for too."""

    class Kind(models.TextChoices):
        TOKEN = "token", "Per token"
        GPU = "gpu", "Per GPU-hour"

    class TokenClass(models.TextChoices):
        INPUT = "input", "Uncached input"
        CACHE_READ = "cache_read", "Cache read input"
        CACHE_WRITE = "cache_write", "Cache write input"
        OUTPUT = "output", "Output"
        REASONING = "reasoning", "Reasoning output"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    model = models.CharField(max_length=256, blank=True, default="")
    provider = models.CharField(
        max_length=128, blank=True, default="", help_text="Empty: any provider."
    )
    token_class = models.CharField(
        max_length=16, choices=TokenClass.choices, blank=True, default=""
    )
    usd_per_token = models.DecimalField(**PER_TOKEN, null=True, blank=True)
    hardware = models.CharField(max_length=128, blank=True, default="")
    gpu_hour_rate = models.DecimalField(
        **GPU_HOUR_RATE, null=True, blank=True, help_text="USD per GPU-hour."
    )
    utilization = models.DecimalField(
        **UTILIZATION,
        null=True,
        blank=True,
        help_text="Share of paid GPU time that serves requests, 0 < u ≤ 1.",
    )
    effective_from = models.DateTimeField()
    source = models.CharField(max_length=128, blank=True, default="")
    note = models.CharField(max_length=512, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=[*RATE_KEY_FIELDS, "effective_from"],
                name="costrate_one_per_key_and_start",
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        kind="token",
                        usd_per_token__isnull=False,
                        usd_per_token__gte=0,
                        hardware="",
                    )
                    & ~Q(model="")
                    & ~Q(token_class="")
                )
                | (
                    Q(
                        kind="gpu",
                        gpu_hour_rate__isnull=False,
                        gpu_hour_rate__gte=0,
                        utilization__gt=0,
                        utilization__lte=1,
                        token_class="",
                    )
                    & ~Q(hardware="")
                ),
                name="costrate_kind_fields",
            ),
        ]
        indexes: ClassVar = [
            models.Index(fields=["kind", "model", "effective_from"], name="costrate_model"),
            models.Index(fields=["kind", "hardware", "effective_from"], name="costrate_hardware"),
        ]
        ordering: ClassVar = [
            "kind",
            "model",
            "hardware",
            "provider",
            "token_class",
            "-effective_from",
        ]

    def __str__(self) -> str:
        if self.kind == self.Kind.GPU:
            return (
                f"{self.hardware}: ${self.gpu_hour_rate}/GPU-h at {self.utilization} "
                f"from {self.effective_from:%Y-%m-%d %H:%M}"
            )
        return (
            f"{self.model}{f' ({self.provider})' if self.provider else ''} {self.token_class}: "
            f"${self.usd_per_million_tokens}/M from {self.effective_from:%Y-%m-%d %H:%M}"
        )

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(getattr(self, name) for name in RATE_KEY_FIELDS)

    @classmethod
    def key_filter(cls, key: tuple[str, ...]) -> dict[str, str]:
        """Filter arguments selecting the rates of `key` (as `CostRate.key` gives it)."""
        return dict(zip(RATE_KEY_FIELDS, key, strict=True))

    @property
    def usd_per_million_tokens(self) -> Decimal | None:
        if self.usd_per_token is None:
            return None
        return (Decimal(self.usd_per_token) * MILLION).normalize()

    @property
    def usd_per_gpu_second(self) -> Decimal | None:
        """What one GPU-second served costs, idle share included (not rounded)."""
        if self.gpu_hour_rate is None or not self.utilization:
            return None
        with localcontext() as ctx:
            ctx.prec = 50
            return Decimal(self.gpu_hour_rate) / SECONDS_PER_HOUR / Decimal(self.utilization)


class MarginSnapshot(models.Model):
    """Revenue, compute cost and margin of one customer in one billing period.

    `period` names the month the billing period starts in; `period_start`/`period_end`
    are the customer's actual period. For the open period, revenue is accrued (flat
    fee recognized day by day plus usage rated so far) and cost counts usage up to
    `as_of`; `projected_*` extrapolate both to the period's end."""

    class RevenueBasis(models.TextChoices):
        INVOICE = "invoice", "Invoiced"
        ACCRUED = "accrued", "Accrued (open period)"
        ESTIMATE = "estimate", "Not invoiced yet (rated by the billing engine)"
        NONE = "none", "No subscription"

    customer = models.ForeignKey(
        "billing.Customer", on_delete=models.CASCADE, related_name="margin_snapshots"
    )
    period = models.DateField(help_text="First day of the month the billing period starts in.")
    period_start = models.DateField()
    period_end = models.DateField()
    as_of = models.DateTimeField()
    is_open = models.BooleanField(default=False)
    currency = models.CharField(max_length=3, default="USD")
    plan_codes = models.JSONField(default=list, blank=True)
    is_flat = models.BooleanField(default=False, help_text="On a flat subscription (no charges).")
    revenue_basis = models.CharField(max_length=16, choices=RevenueBasis.choices)
    revenue = models.DecimalField(**MONEY, default=Decimal(0))
    cost = models.DecimalField(**MONEY, default=Decimal(0))
    token_cost = models.DecimalField(**MONEY, default=Decimal(0))
    gpu_cost = models.DecimalField(**MONEY, default=Decimal(0))
    margin = models.DecimalField(**MONEY, default=Decimal(0))
    margin_ratio = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True)
    projected_cost = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="Open period: cost at the current run rate."
    )
    projected_revenue = models.DecimalField(
        **MONEY,
        null=True,
        blank=True,
        help_text="Open period: revenue for usage at the run rate; rated only when the "
        "projected cost exceeds the fees in full plus usage rated so far.",
    )
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cache_read_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    gpu_seconds = models.DecimalField(**QUANTITY, default=Decimal(0))
    uncosted_requests = models.BigIntegerField(default=0)
    uncosted_tokens = models.BigIntegerField(default=0)
    uncosted_gpu_seconds = models.DecimalField(**QUANTITY, default=Decimal(0))
    breakdown = models.JSONField(
        default=dict, blank=True, help_text="Cost and usage by model and by hardware."
    )
    insights = models.JSONField(
        default=dict,
        blank=True,
        help_text="For flagged customers: reference plan amount, break-even usage, most "
        "expensive models, cache-read share of input.",
    )
    flag = models.CharField(max_length=24, blank=True, default="")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["customer", "period"], name="marginsnapshot_unique")
        ]
        indexes: ClassVar = [models.Index(fields=["period", "margin"], name="marginsnapshot_rank")]

    def __str__(self) -> str:
        return f"{self.customer} {self.period:%Y-%m}: margin {self.margin:.2f}"


class MarginFlag(models.Model):
    """A customer flagged in a period. At most one active flag per customer and period:
    the most severe that holds (negative_margin, then projected_negative, then
    low_margin). A change of kind clears the old flag and raises the new one."""

    class Kind(models.TextChoices):
        NEGATIVE_MARGIN = "negative_margin", "Negative margin"
        PROJECTED_NEGATIVE = "projected_negative", "Projected negative"
        LOW_MARGIN = "low_margin", "Low margin"

    SEVERITY: ClassVar[dict[str, int]] = {
        "negative_margin": 3,
        "projected_negative": 2,
        "low_margin": 1,
    }

    customer = models.ForeignKey(
        "billing.Customer", on_delete=models.CASCADE, related_name="margin_flags"
    )
    period = models.DateField()
    kind = models.CharField(max_length=24, choices=Kind.choices)
    is_flat = models.BooleanField(default=False)
    raised_at = models.DateTimeField(default=timezone.now)
    cleared_at = models.DateTimeField(null=True, blank=True)
    revenue = models.DecimalField(**MONEY, default=Decimal(0))
    cost = models.DecimalField(**MONEY, default=Decimal(0))
    margin = models.DecimalField(**MONEY, default=Decimal(0))
    margin_ratio = models.DecimalField(max_digits=24, decimal_places=6, null=True, blank=True)
    previous_kind = models.CharField(max_length=24, blank=True, default="")
    emailed_at = models.DateTimeField(null=True, blank=True)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_attempts = models.PositiveIntegerField(default=0)
    webhook_last_error = models.CharField(max_length=512, blank=True, default="")

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["customer", "period"],
                condition=Q(cleared_at__isnull=True),
                name="marginflag_one_active",
            )
        ]
        indexes: ClassVar = [models.Index(fields=["period", "cleared_at"], name="marginflag_open")]

    def __str__(self) -> str:
        state = "active" if self.cleared_at is None else "cleared"
        return f"{self.customer} {self.period:%Y-%m} {self.kind} ({state})"


class ReferencePlan(models.Model):
    """A single row: the plan code flagged customers are compared with ("what they would
    have paid on usage pricing"). Empty: settings.INFERBILL_REFERENCE_PLAN."""

    plan_code = models.CharField(max_length=64, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "reference plan"

    def __str__(self) -> str:
        return self.plan_code or f"(setting: {settings.INFERBILL_REFERENCE_PLAN or 'none'})"

    def save(self, *args: object, **kwargs: object) -> None:
        self.pk = 1  # a singleton
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def code(cls) -> str:
        row = cls.objects.filter(pk=1).first()
        return (row.plan_code if row else "") or settings.INFERBILL_REFERENCE_PLAN
