"""Finalization: gap-free numbers, frozen invoices, void, and concurrency on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction

from billing import invoicing
from billing.invoicing import InvoiceStateError, invoice_finalize, invoice_void
from billing.models import Invoice, InvoiceLine, InvoiceNumberSequence
from tests.billing.helpers import (
    APRIL,
    MAY,
    at,
    customer,
    ev,
    fresh,
    generate,
    lines,
    per_unit,
    plan,
    store,
    subscribe,
)

D = Decimal


def drafts(n: int, *, flat_fee: str = "10.00") -> list[Invoice]:
    p = plan(flat_fee=flat_fee, charges=[per_unit("output_tokens", "10")])
    return [generate(subscribe(customer(f"c{i}"), p)) for i in range(n)]


@pytest.mark.django_db
def test_finalize_numbers_and_freezes_a_draft() -> None:
    (draft,) = drafts(1)
    invoice = invoice_finalize(invoice_id=draft.id)
    assert (invoice.status, invoice.number, invoice.total) == ("finalized", "INV-000001", D(10))
    assert invoice.finalized_at is not None
    # Idempotent: a second call neither renumbers nor consumes a number.
    again = invoice_finalize(invoice_id=draft.id)
    assert (again.number, again.finalized_at) == (invoice.number, invoice.finalized_at)
    assert InvoiceNumberSequence.objects.get().last_value == 1
    assert str(fresh(invoice)) == "INV-000001"


@pytest.mark.django_db
def test_finalize_recomputes_the_draft_one_last_time() -> None:
    (draft,) = drafts(1)
    assert draft.total == D("10.00")
    store(ev("c0", "2026-04-30 23:30", output_tokens=1_000_000))
    assert invoice_finalize(invoice_id=draft.id).total == D("20.00")


@pytest.mark.django_db
def test_numbers_are_gap_free_and_sequential() -> None:
    invoices = drafts(4)
    invoice_void(invoice_id=invoices[1].id)  # a void draft never takes a number
    numbers = [invoice_finalize(invoice_id=i.id).number for i in (invoices[2], invoices[0])]
    assert numbers == ["INV-000001", "INV-000002"]
    invoice_void(invoice_id=invoices[2].id)  # voiding keeps the number used
    assert fresh(invoices[2]).number == "INV-000001"
    assert invoice_finalize(invoice_id=invoices[3].id).number == "INV-000003"


@pytest.mark.django_db
def test_a_rolled_back_finalization_gives_its_number_back() -> None:
    first, second = drafts(2)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        assert invoice_finalize(invoice_id=first.id).number == "INV-000001"
        raise Boom
    assert fresh(first).status == "draft"
    assert fresh(first).number is None
    assert invoice_finalize(invoice_id=second.id).number == "INV-000001"
    assert invoice_finalize(invoice_id=first.id).number == "INV-000002"


@pytest.mark.django_db
def test_a_finalized_invoice_never_changes() -> None:
    (draft,) = drafts(1)
    store(ev("c0", "2026-04-10 00:00", output_tokens=1_000_000))
    invoice = invoice_finalize(invoice_id=draft.id)
    before = [(line.pk, line.amount, line.quantity) for line in lines(invoice)]
    assert invoice.total == D("20.00")
    store(ev("c0", "2026-04-11 00:00", output_tokens=3_000_000))  # late
    assert generate(invoice.subscription).total == D("20.00")
    invoicing.invoices_generate_chunk(
        subscription_ids=[invoice.subscription_id], period_start=APRIL, as_of=at("2026-05-09")
    )
    after = fresh(invoice)
    assert (after.total, after.number, after.computed_at) == (
        D("20.00"),
        "INV-000001",
        invoice.computed_at,
    )
    assert [(line.pk, line.amount, line.quantity) for line in lines(after)] == before


@pytest.mark.django_db
def test_void_and_its_refusals() -> None:
    a, b, c = drafts(3)
    voided = invoice_void(invoice_id=a.id)
    assert (voided.status, voided.number) == ("void", None)
    assert voided.voided_at is not None
    assert invoice_void(invoice_id=a.id).voided_at == voided.voided_at  # idempotent
    with pytest.raises(InvoiceStateError, match="void"):
        invoice_finalize(invoice_id=a.id)
    # A void invoice is settled: the cycle neither regenerates nor finalizes it.
    store(ev("c0", "2026-04-10 00:00", output_tokens=1_000_000))
    invoicing.invoices_generate_chunk(
        subscription_ids=[a.subscription_id], period_start=APRIL, as_of=at("2026-05-09")
    )
    assert (fresh(a).status, fresh(a).total) == ("void", D("10.00"))
    Invoice.objects.filter(pk=b.pk).update(status=Invoice.Status.PAID)
    with pytest.raises(InvoiceStateError, match="paid"):
        invoice_void(invoice_id=b.id)
    assert fresh(b).status == "paid"
    finalized = invoice_finalize(invoice_id=c.id)
    assert invoice_void(invoice_id=c.id).number == finalized.number


# --- concurrency (PostgreSQL) -------------------------------------------------------------


def run_threads(*targets: Callable[[], Any]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(target: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported to the test
                errors.append(exc)
            finally:
                connection.close()

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_finalizations_take_distinct_consecutive_numbers() -> None:
    invoices = drafts(8)
    barrier = threading.Barrier(len(invoices))

    def finalize(invoice_id: int) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            invoice_finalize(invoice_id=invoice_id)

        return run

    assert run_threads(*(finalize(i.id) for i in invoices)) == []
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"INV-{n:06d}" for n in range(1, 9)]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_generation_makes_one_invoice() -> None:
    sub = subscribe(customer(), plan(flat_fee="10.00", charges=[per_unit("output_tokens", "10")]))
    store(ev("acme", "2026-04-10 00:00", output_tokens=1_000_000))
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        generate(sub)

    assert run_threads(*([run] * 4)) == []
    invoice = Invoice.objects.get()
    assert invoice.total == D("20.00")
    assert InvoiceLine.objects.filter(invoice=invoice).count() == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_finalize_and_generate_of_one_invoice_do_not_deadlock() -> None:
    """A generator holds the customer and subscription locks and is about to lock the
    invoice, while a finalization starts: both lock in the same order, so neither fails."""
    (draft,) = drafts(1)
    store(ev("c0", "2026-04-10 00:00", output_tokens=1_000_000))
    locked = threading.Event()

    def generator() -> None:
        from billing.models import Subscription

        with transaction.atomic():
            invoicing.customers_lock([draft.customer_id])
            Subscription.objects.select_for_update().get(pk=draft.subscription_id)
            locked.set()
            time.sleep(1.5)  # the finalizer is now waiting on one of our locks
            invoicing.invoice_generate(subscription_id=draft.subscription_id, period_start=APRIL)

    def finalizer() -> None:
        assert locked.wait(10)
        invoice_finalize(invoice_id=draft.id)

    assert run_threads(generator, finalizer) == []
    invoice = fresh(draft)
    assert (invoice.status, invoice.number, invoice.total) == ("finalized", "INV-000001", D(20))


@pytest.mark.django_db
def test_finalizing_a_may_invoice_leaves_april_alone() -> None:
    p = plan(flat_fee="10.00")
    sub = subscribe(customer(), p, start=date(2026, 4, 1))
    april, may = generate(sub, APRIL), generate(sub, MAY)
    invoice_finalize(invoice_id=may.id)
    assert (fresh(april).status, fresh(may).status) == ("draft", "finalized")


def _late_march_usage_on_two_drafts() -> tuple[Invoice, Invoice]:
    """A customer whose March invoice is finalized, with late March usage that both its
    April and May drafts would bill as an adjustment ($10). The customer changed plans
    on 1 May, so the two drafts belong to two subscriptions (whose locks alone would
    not keep them apart) and may be recomputed by two workers at once."""
    acme = customer()
    march_plan = plan("march", charges=[per_unit("output_tokens", "10")])
    first = subscribe(acme, march_plan, start=date(2026, 3, 1))
    second = subscribe(acme, plan("may", charges=[per_unit("output_tokens", "10")]), start=MAY)
    store(ev("acme", "2026-03-10 00:00", output_tokens=1_000_000))
    invoice_finalize(invoice_id=generate(first, date(2026, 3, 1)).id)
    store(ev("acme", "2026-03-20 00:00", output_tokens=1_000_000))  # late
    april, may = generate(first, APRIL), generate(second, MAY)
    assert april.subscription_id != may.subscription_id
    for draft in (april, may):
        adjusted = [line.amount for line in lines(draft) if line.kind == "adjustment"]
        assert adjusted == [D("10.00")]  # both drafts show it, until one bills it
    return april, may


def _adjustments_billed() -> Decimal:
    return sum(
        (
            line.amount
            for line in InvoiceLine.objects.filter(
                kind="adjustment", invoice__status__in=["finalized", "paid"]
            )
        ),
        D(0),
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_invoices_of_one_customer_finalized_at_once_bill_late_usage_once() -> None:
    april, may = _late_march_usage_on_two_drafts()
    barrier = threading.Barrier(2)

    def finalize(invoice_id: int) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            invoice_finalize(invoice_id=invoice_id)

        return run

    assert run_threads(finalize(april.id), finalize(may.id)) == []
    assert {fresh(april).status, fresh(may).status} == {"finalized"}
    assert _adjustments_billed() == D("10.00")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_finalizing_waits_while_another_invoice_of_the_customer_is_recomputed() -> None:
    """The serialisation itself, without a race: while one transaction holds the
    customer (as a recompute does), finalizing another invoice of theirs waits for it."""
    from billing.models import Customer

    april, may = _late_march_usage_on_two_drafts()
    held, release = threading.Event(), threading.Event()
    waiting: list[bool] = []

    def holder() -> None:
        with transaction.atomic():
            Customer.objects.select_for_update().get(pk=april.customer_id)
            invoice_finalize(invoice_id=april.id)
            held.set()
            with connection.cursor() as cursor:
                for _ in range(100):  # until the finalizer is seen blocked on a lock
                    cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    if cursor.fetchone()[0]:
                        waiting.append(True)
                        break
                    time.sleep(0.05)
            assert fresh(may).status == "draft"  # not finalized while we hold the customer
            release.wait(10)

    def finalizer() -> None:
        assert held.wait(10)
        invoice_finalize(invoice_id=may.id)

    def releaser() -> None:
        assert held.wait(10)
        time.sleep(0.5)
        release.set()

    assert run_threads(holder, finalizer, releaser) == []
    assert waiting == [True]
    may = fresh(may)
    assert may.status == "finalized"
    assert [line.amount for line in lines(may) if line.kind == "adjustment"] == []
    assert _adjustments_billed() == D("10.00")
