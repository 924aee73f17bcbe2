"""Argument parsing shared by the pricing commands."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from django.core.management.base import CommandError

from pricing.selectors import parse_period


def parse_moment(raw: str, *, name: str) -> datetime:
    """YYYY-MM-DD (midnight UTC) or an RFC 3339 date-time (UTC if no offset)."""
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), time.min, tzinfo=UTC)
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CommandError(f"{name}: {exc}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_month(raw: str, *, name: str = "--period") -> date:
    try:
        return parse_period(raw)
    except ValueError as exc:
        raise CommandError(f"{name}: must be YYYY-MM, got {raw!r}") from exc
