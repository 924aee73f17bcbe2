"""Billing periods: a subscription's monthly periods from its anchor day, and the part of
each it covers (its service period)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from billing import rating
from billing.models import Subscription


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    start: date
    end: date  # exclusive
    service_start: date  # the part the subscription covers
    service_end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def service_days(self) -> int:
        return (self.service_end - self.service_start).days


def subscription_periods(
    subscription: Subscription, *, ended_before: date | None = None
) -> Iterator[BillingPeriod]:
    """The subscription's billing periods, in order; with `ended_before`, only those
    whose period end is on or before that day."""
    anchor_day = subscription.anchor_day
    start, end = rating.period_containing(day=subscription.start_date, anchor_day=anchor_day)
    while True:
        if ended_before is not None and end > ended_before:
            return
        if subscription.end_date is not None and start >= subscription.end_date:
            return
        service_start = max(start, subscription.start_date)
        service_end = min(end, subscription.end_date) if subscription.end_date else end
        if service_start < service_end:
            yield BillingPeriod(start, end, service_start, service_end)
        start, end = rating.period_containing(day=end, anchor_day=anchor_day)


def period_for(subscription: Subscription, period_start: date) -> BillingPeriod:
    for period in subscription_periods(subscription):
        if period.start == period_start:
            return period
        if period.start > period_start:
            break
    raise ValueError(f"{period_start} does not start a billing period of {subscription}")
