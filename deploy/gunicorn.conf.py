"""gunicorn settings for Inferbill's API.

    gunicorn -c deploy/gunicorn.conf.py inferbill.wsgi:application

Sizing: a request spends much of its time waiting for PostgreSQL (the commit's WAL
flush above all), with the GIL released, and the rest in Python. So: one process per
core plus one, each with a few threads, so that 16 clients sending single events
keep 16+ requests in flight, while batches of 1,000 events (CPU-bound in Python)
still run on every core. gthread keeps client connections alive between requests.
On the 2-core benchmark box (PostgreSQL on the same box) that is 3 workers x 6
threads; bench/ingest.py --workers/--threads tries others.

Every knob can be overridden from the environment: GUNICORN_BIND (default
127.0.0.1:8000), GUNICORN_WORKERS (or WEB_CONCURRENCY), GUNICORN_THREADS,
GUNICORN_WORKER_CLASS, GUNICORN_TIMEOUT, GUNICORN_KEEPALIVE, GUNICORN_ACCESSLOG,
GUNICORN_LOGLEVEL. Each worker thread keeps one PostgreSQL connection open
(CONN_MAX_AGE): workers x threads must stay below the server's max_connections.
"""

from __future__ import annotations

import os

cores = os.cpu_count() or 1

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
workers = int(os.environ.get("GUNICORN_WORKERS") or os.environ.get("WEB_CONCURRENCY") or cores + 1)
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
