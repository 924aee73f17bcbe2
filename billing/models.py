"""Billing data: customers, versioned plans and their charges, subscriptions, invoices.

Invariants kept here and in billing.services:
- one invoice per (subscription, period start): a unique constraint, so a re-run
  or a second worker can never bill a period twice;
- a finalized invoice never changes; late usage goes on a later invoice as an
  adjustment line;
- invoice numbers are gap-free, taken under a row lock at finalization.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from django.db import models
from django.utils import timezone

from billing import rating

PRICE = {"max_digits": 30, "decimal_places": 15}  # a token can cost $0.0000001
AMOUNT = {"max_digits": 24, "decimal_places": 4}  # rounded to a minor unit (≤ 3 places)
QUANTITY = {"max_digits": 30, "decimal_places": 6}

STANDARD_METRICS = (
    "requests",
    "input_tokens",
    "uncached_input_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "gpu_seconds",
)


class Customer(models.Model):
    """A paying account. Events name it by `external_id`."""

    external_id = models.CharField(max_length=128, unique=True)
    name = models.CharField(max_length=256, blank=True, default="")
    email = models.EmailField(blank=True, default="")
    currency = models.CharField(max_length=3, default="USD")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name or self.external_id


class Plan(models.Model):
    """One version of a price book. Changing prices creates a new version with the same
    code; subscriptions keep the version they were put on until moved."""

    class Interval(models.TextChoices):
        MONTHLY = "monthly", "Monthly"

    code = models.CharField(max_length=64)
    version = models.PositiveIntegerField(default=1)
    name = models.CharField(max_length=256)
    currency = models.CharField(max_length=3, default="USD")
    interval = models.CharField(max_length=16, choices=Interval.choices, default=Interval.MONTHLY)
    flat_fee = models.DecimalField(**PRICE, default=Decimal(0))
    minimum = models.DecimalField(**PRICE, null=True, blank=True)
    is_latest = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["code", "version"], name="plan_code_version"),
            models.UniqueConstraint(
                fields=["code"], condition=models.Q(is_latest=True), name="plan_one_latest"
            ),
        ]
        ordering: ClassVar = ["code", "-version"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code} v{self.version})"

    @property
    def is_flat(self) -> bool:
        """A flat ("unlimited") subscription: a fee and no usage charges."""
        return not self.charges.exists()


class Charge(models.Model):
    """A metric, an optional filter and a price model, on one plan version."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="charges")
    position = models.PositiveIntegerField(default=0)
    display_name = models.CharField(max_length=256)
    metric = models.CharField(max_length=128)
    filter = models.JSONField(default=dict, blank=True)
    price_model = models.CharField(
        max_length=16,
        choices=[(m, m) for m in ("per_unit", "graduated", "volume", "package")],
    )
    unit_size = models.DecimalField(**QUANTITY, default=Decimal(1))
    unit_price = models.DecimalField(**PRICE, null=True, blank=True)
    tiers = models.JSONField(default=list, blank=True)
    package_size = models.DecimalField(**QUANTITY, null=True, blank=True)
    included_units = models.DecimalField(**QUANTITY, default=Decimal(0))

    class Meta:
        ordering: ClassVar = ["plan", "position", "id"]

    def __str__(self) -> str:
        return self.display_name

    def price_spec(self) -> rating.PriceSpec:
        return rating.PriceSpec(
            price_model=self.price_model,  # type: ignore[arg-type]
            unit_size=Decimal(self.unit_size),
            unit_price=None if self.unit_price is None else Decimal(self.unit_price),
            tiers=tuple(
                rating.Tier(
                    up_to=None if t.get("up_to") is None else Decimal(str(t["up_to"])),
                    unit_price=Decimal(str(t["unit_price"])),
                    flat_fee=Decimal(str(t.get("flat_fee") or 0)),
                )
                for t in self.tiers
            ),
            package_size=None if self.package_size is None else Decimal(self.package_size),
            included_units=Decimal(self.included_units),
        )


class Subscription(models.Model):
    """A customer on a plan version from `start_date` (inclusive) to `end_date`
    (exclusive, open if null), billed monthly from `anchor_day`."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    start_date = models.DateField()
    end_date = models.DateField(null=True, blank=True)
    anchor_day = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["customer", "start_date"])]

    def __str__(self) -> str:
        return f"{self.customer} on {self.plan} from {self.start_date}"


class Invoice(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINALIZED = "finalized", "Finalized"
        PAID = "paid", "Paid"
        VOID = "void", "Void"

    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="invoices"
    )
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    # The billing period, and the part of it the subscription covered.
    period_start = models.DateField()
    period_end = models.DateField()
    service_start = models.DateField()
    service_end = models.DateField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    number = models.CharField(max_length=32, unique=True, null=True, blank=True)
    total = models.DecimalField(**AMOUNT, default=Decimal(0))
    created_at = models.DateTimeField(default=timezone.now)
    computed_at = models.DateTimeField(default=timezone.now)
    finalized_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["subscription", "period_start"], name="invoice_one_per_period"
            )
        ]
        indexes: ClassVar = [
            models.Index(fields=["customer", "period_start"]),
            models.Index(fields=["status", "period_end"]),
        ]
        permissions: ClassVar = [
            ("finalize_invoice", "Can finalize invoices"),
            ("void_invoice", "Can void invoices"),
        ]

    def __str__(self) -> str:
        return self.number or f"draft {self.pk} ({self.customer}, {self.period_start})"

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def total_minor_units(self) -> int:
        return rating.to_minor_units(amount=Decimal(self.total), currency=self.currency)


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        FLAT_FEE = "flat_fee", "Flat fee"
        USAGE = "usage", "Usage"
        MINIMUM = "minimum", "Minimum commitment true-up"
        ADJUSTMENT = "adjustment", "Late usage adjustment"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    charge = models.ForeignKey(Charge, on_delete=models.PROTECT, null=True, blank=True)
    description = models.CharField(max_length=512)
    metric = models.CharField(max_length=128, blank=True, default="")
    filter = models.JSONField(default=dict, blank=True)
    quantity = models.DecimalField(**QUANTITY, default=Decimal(0))
    included_units = models.DecimalField(**QUANTITY, default=Decimal(0))
    billable_quantity = models.DecimalField(**QUANTITY, default=Decimal(0))
    unit_price = models.DecimalField(**PRICE, null=True, blank=True)
    unit_size = models.DecimalField(**QUANTITY, default=Decimal(1))
    tiers_applied = models.JSONField(default=list, blank=True)
    amount_exact = models.DecimalField(max_digits=40, decimal_places=20, default=Decimal(0))
    amount = models.DecimalField(**AMOUNT, default=Decimal(0))
    # Adjustment lines: the earlier, finalized invoice whose late usage they bill.
    adjusts_invoice = models.ForeignKey(
        "Invoice", on_delete=models.PROTECT, null=True, blank=True, related_name="adjustments"
    )

    class Meta:
        ordering: ClassVar = ["invoice", "position"]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"


class InvoiceNumberSequence(models.Model):
    """A single row holding the last invoice number issued. Finalization locks it, so
    numbers are gap-free: a rolled-back finalization gives its number back."""

    name = models.CharField(max_length=32, unique=True, default="invoice")
    last_value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: {self.last_value}"
