"""Invoice services: compute, generate (draft, regenerated in place), finalize, void.

Preconditions and guarantees:
- `invoice_generate` may run any number of times, concurrently, for the same
  subscription and period: the unique constraint (subscription, period_start) and a
  row lock on the subscription make exactly one invoice, whose draft lines are
  rewritten from the usage of the moment. A finalized invoice is never touched.
- `invoice_finalize` recomputes a draft one last time and gives it the next
  gap-free number, in one transaction.
- Usage that arrives for a finalized period is billed as adjustment lines on the
  customer's next invoice (the one whose subscription covers the end of its period),
  computed as rate(quantity now) − rate(quantity billed so far), so tiers and
  included units stay right and nothing is billed twice.
- Every writer locks the customer first (`customers_lock`), then subscriptions, then
  invoices, then the number sequence: two invoices of one customer are never
  recomputed at once (each would bill the other's adjustments again), and the order
  is the one subscribing uses, so nothing deadlocks.

Modules: periods (billing periods), compute (an invoice's lines), adjustments (late
usage of billed periods), store (writing invoices back), generate (generate, finalize,
void), chunk (the cycle: due periods, many invoices at once). Import from the package.
"""

from billing.invoicing.adjustments import ADJUSTMENT_LOOKBACK_PERIODS, BILLED_STATUSES
from billing.invoicing.chunk import due_periods, grace_period, invoices_generate_chunk
from billing.invoicing.compute import LineDraft, invoice_compute
from billing.invoicing.generate import (
    InvoiceStateError,
    customers_lock,
    invoice_finalize,
    invoice_generate,
    invoice_void,
)
from billing.invoicing.periods import BillingPeriod, day_start, period_for, subscription_periods

__all__ = [
    "ADJUSTMENT_LOOKBACK_PERIODS",
    "BILLED_STATUSES",
    "BillingPeriod",
    "InvoiceStateError",
    "LineDraft",
    "customers_lock",
    "day_start",
    "due_periods",
    "grace_period",
    "invoice_compute",
    "invoice_finalize",
    "invoice_generate",
    "invoice_void",
    "invoices_generate_chunk",
    "period_for",
    "subscription_periods",
]
