"""gunicorn settings for Inferbill's API.

    gunicorn -c deploy/gunicorn.conf.py          # serves inferbill.asgi:application

The worker class is uvicorn's (the uvicorn-worker package: uvloop and the httptools
parser), serving the ASGI application: POST /v1/events is answered on each worker's
event loop and small writes are group-committed (metering.group_commit); everything
else is Django's ASGI handler. On the 2-core benchmark box a do-nothing app answers
about 7,200 requests/s from gunicorn's gthread worker and 21,900 from this one.

Sizing: two processes per core. A batch of 1,000 events is CPU-bound in Python (its
validation on the event loop, its rows in a database thread, both under the one
GIL of its process), so two batches that land in one process take turns; with a
process for each of the benchmark's 4 batch clients, (a) ran at 61,216 and 55,369
events/s against 58,365 and 43,536 with 3 processes, in alternating runs on the 2-core
box. Each worker holds INFERBILL_GROUP_COMMIT_CONNECTIONS (1) connection for group
commits (one writer per worker makes fuller groups: 16 single-event clients got
3,775 and 3,174 requests/s from 4 workers with one writer each, 3,363 and 2,724 with
two each) and up to INFERBILL_ASGI_DB_THREADS (4) for batches and the rest: workers x 5
must stay below the server's max_connections. bench/ingest.py --workers tries others.

Every knob can be overridden from the environment: GUNICORN_BIND (default
127.0.0.1:8000), GUNICORN_WORKERS (or WEB_CONCURRENCY), GUNICORN_WORKER_CLASS,
GUNICORN_APP, GUNICORN_TIMEOUT, GUNICORN_KEEPALIVE, GUNICORN_ACCESSLOG,
GUNICORN_LOGLEVEL. The WSGI application (inferbill.wsgi:application, with
GUNICORN_WORKER_CLASS=gthread and GUNICORN_THREADS) still serves everything, without
group commit.
"""

from __future__ import annotations

import os

cores = os.cpu_count() or 1

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# libuv (under uvloop) accepts one connection per wake-up instead of all that are
# waiting, so that connections opened together spread over the workers: a batch's
# Python runs under its worker's GIL, and measured with 4 batch clients connecting at
# once, one worker often took all four (one core of Python for the whole machine:
# 43,806 and 45,560 events/s; 62,351 when they spread).
os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")

wsgi_app = os.environ.get("GUNICORN_APP", "inferbill.asgi:application")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "uvicorn_worker.UvicornWorker")
workers = int(os.environ.get("GUNICORN_WORKERS") or os.environ.get("WEB_CONCURRENCY") or 2 * cores)
threads = int(os.environ.get("GUNICORN_THREADS", "6"))
# Load the app once in the master and fork: faster start, shared memory. Settings do
# no network I/O at import, so no database connection is shared across the fork.
preload_app = True
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
backlog = 2048
# The heartbeat file on tmpfs, so a slow disk never makes a worker look dead.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 (gunicorn docs)
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "warning")
