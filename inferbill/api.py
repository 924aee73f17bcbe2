"""Project-wide API glue: error shape and the database-down answer."""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE = {"detail": "The database is unavailable; nothing was stored. Retry later."}


def database_unavailable() -> Response:
    response = Response(DATABASE_UNAVAILABLE, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OperationalError | InterfaceError):
        return database_unavailable()
    return drf_exception_handler(exc, context)
