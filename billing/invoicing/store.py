"""Writing recomputed invoices back: lines by COPY, invoice fields in one UPDATE."""

from __future__ import annotations

from django.db import connection
from django.db.models import JSONField
from psycopg.types.json import Jsonb

from billing.models import Invoice, InvoiceLine

# Every column but the id, from the model, so that a new field is written too.
_LINE_FIELDS = [f for f in InvoiceLine._meta.concrete_fields if not f.primary_key]
_LINE_COPY_SQL = (
    f"COPY {InvoiceLine._meta.db_table} ({', '.join(f.column for f in _LINE_FIELDS)}) FROM STDIN"
)


def _lines_insert(lines: list[InvoiceLine]) -> None:
    """Insert invoice lines; on PostgreSQL with COPY (a tenth of bulk_create's time)."""
    if connection.vendor != "postgresql":
        InvoiceLine.objects.bulk_create(lines, batch_size=500)
        return
    with connection.cursor() as cursor, cursor.cursor.copy(_LINE_COPY_SQL) as copy:
        for line in lines:
            copy.write_row(
                [
                    Jsonb(getattr(line, f.attname))
                    if isinstance(f, JSONField)
                    else getattr(line, f.attname)
                    for f in _LINE_FIELDS
                ]
            )


_INVOICE_FIELDS = (
    "service_start",
    "service_end",
    "total",
    "computed_at",
    "number",
    "status",
    "finalized_at",
)


_INVOICES_UPDATE_SQL = f"""
    UPDATE billing_invoice AS i SET {", ".join(f"{f} = v.{f}" for f in _INVOICE_FIELDS)}
    FROM unnest(%s::bigint[], %s::date[], %s::date[], %s::numeric[], %s::timestamptz[],
                %s::text[], %s::text[], %s::timestamptz[])
        AS v(id, {", ".join(_INVOICE_FIELDS)})
    WHERE i.id = v.id
"""


def _invoices_update(invoices: list[Invoice]) -> None:
    """Write the computed fields of many invoices back in one statement."""
    if not invoices:
        return
    if connection.vendor != "postgresql":
        Invoice.objects.bulk_update(invoices, _INVOICE_FIELDS, batch_size=500)
        return
    columns = [[i.id for i in invoices]]
    columns += [[getattr(i, f) for i in invoices] for f in _INVOICE_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(_INVOICES_UPDATE_SQL, columns)
