"""The WSGI application gunicorn serves (deploy/gunicorn.conf.py).

Django's handler, except that POST /v1/events, the ingest hot path, goes straight
to its view function: no middleware, no URL resolving, no DRF. Measured per single
event request in one gunicorn worker, that chain cost about as much CPU as storing
the event does. What the middleware would have given this endpoint is kept: the
Host header is still checked against ALLOWED_HOSTS (a bad one takes the normal
path and gets Django's 400), and request_started/request_finished still fire, so
database connections are managed as for any request. Client errors are not logged
(a sender's bad events are answered, not a server problem); 5xx are.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.core.exceptions import DisallowedHost
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponseBase
from django.utils.log import log_response

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inferbill.settings")

EVENTS_PATH = "/v1/events"


class InferbillWSGIHandler(WSGIHandler):
    def get_response(self, request: HttpRequest) -> HttpResponseBase:
        if request.method != "POST" or request.path_info != EVENTS_PATH:
            return super().get_response(request)
        try:
            request.get_host()
        except DisallowedHost:
            return super().get_response(request)
        from metering.api import events_post

        try:
            response = events_post(request)
        except Exception as exc:  # what Django's handler does with a view's exception
            response = response_for_exception(request, exc)
        response._resource_closers.append(request.close)  # type: ignore[attr-defined]
        if response.status_code >= 500:  # client errors are answered, not logged
            log_response("%s: %s", response.reason_phrase, request.path, response=response)
        return response


def get_application() -> Any:
    django.setup(set_prefix=False)
    return InferbillWSGIHandler()


application = get_application()
