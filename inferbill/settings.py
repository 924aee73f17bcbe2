"""Settings, all from the environment (see .env.example).

No DATABASE_URL: an SQLite file next to manage.py. No CELERY_BROKER_URL: Celery
runs tasks eagerly in-process. Nothing here touches the network at import time.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
# A fixed development key is only acceptable when DEBUG is on or nothing is configured;
# production deployments set SECRET_KEY (deploy/ shows how).
SECRET_KEY = os.environ.get("SECRET_KEY") or "inferbill-insecure-development-key-change-me"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "metering",
    "billing",
    "pricing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "inferbill.urls"
WSGI_APPLICATION = "inferbill.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'inferbill.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "600")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default serves a demo; WAL lets the usage API read while ingest writes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
else:
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", int(os.environ.get("DATABASE_CONNECT_TIMEOUT", "5"))
    )
    # The ingest path prepares its statements (psycopg server-side binding; the ORM's
    # client-side cursors never prepare). Behind a transaction-pooling PgBouncer older
    # than 1.21, set DATABASE_PREPARE_THRESHOLD=off.
    _prepare = os.environ.get("DATABASE_PREPARE_THRESHOLD", "5").strip().lower()
    DATABASES["default"]["OPTIONS"].setdefault(
        "prepare_threshold", None if _prepare in {"", "off", "none"} else int(_prepare)
    )
    if os.environ.get("DATABASE_TEST_NAME"):
        DATABASES["default"]["TEST"] = {"NAME": os.environ["DATABASE_TEST_NAME"]}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# The ingest view reads the raw body itself and enforces its own 5 MiB limit with a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = 6 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["metering.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "inferbill.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Inferbill API",
    "DESCRIPTION": "Usage metering and billing for AI inference.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# Celery: no broker configured means tasks run eagerly, in-process.
# In-memory transport when eager, so nothing ever tries to reach a broker.
CELERY_TASK_ALWAYS_EAGER = not os.environ.get("CELERY_BROKER_URL")
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "memory://localhost/"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "inferbill")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# How long a task taken by a worker that died stays invisible before redelivery.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("INFERBILL_BROKER_VISIBILITY_TIMEOUT", "3600"))
}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "metering-usage-rollup": {"task": "metering.tasks.usage_rollup_task", "schedule": 60.0},
    "billing-invoices-cycle": {"task": "billing.tasks.invoices_cycle_task", "schedule": 3600.0},
    "metering-partitions-ensure": {
        "task": "metering.tasks.event_partitions_ensure_task",
        "schedule": 6 * 3600.0,
    },
    # Margins of the open period hourly; the previous period daily (late usage, invoices).
    "pricing-margins-refresh": {"task": "pricing.tasks.margins_refresh_task", "schedule": 3600.0},
    "pricing-margins-refresh-previous": {
        "task": "pricing.tasks.margins_refresh_previous_task",
        "schedule": 24 * 3600.0,
    },
}

# Inferbill's own knobs.
INFERBILL_MAX_EVENT_AGE_DAYS = int(os.environ.get("INFERBILL_MAX_EVENT_AGE_DAYS", "35"))
INFERBILL_MAX_EVENT_FUTURE_SECONDS = 300
INFERBILL_MAX_BATCH_EVENTS = 5000
INFERBILL_MAX_BODY_BYTES = 5 * 1024 * 1024
# The ASGI ingest path (inferbill.asgi): threads per process for database work the
# event loop hands off (batches, refusals), and connections per process that
# group-commit small writes (metering.group_commit).
INFERBILL_ASGI_DB_THREADS = int(os.environ.get("INFERBILL_ASGI_DB_THREADS", "4"))
INFERBILL_GROUP_COMMIT_CONNECTIONS = int(os.environ.get("INFERBILL_GROUP_COMMIT_CONNECTIONS", "1"))
INFERBILL_INVOICE_GRACE_HOURS = int(os.environ.get("INFERBILL_INVOICE_GRACE_HOURS", "24"))

# Pricing: margin flags and who hears about them.
INFERBILL_MARGIN_FLOOR = os.environ.get("INFERBILL_MARGIN_FLOOR", "0.20")  # a decimal ratio
# No projected_negative flag before this much of a period has elapsed (run rates of the
# first hours are noise).
INFERBILL_PROJECTION_MIN_HOURS = int(os.environ.get("INFERBILL_PROJECTION_MIN_HOURS", "24"))
# Plan code flagged customers are compared with; editable in the admin (Reference plan).
INFERBILL_REFERENCE_PLAN = os.environ.get("INFERBILL_REFERENCE_PLAN", "")
INFERBILL_FINANCE_EMAILS = env_list("INFERBILL_FINANCE_EMAILS")
INFERBILL_ALERT_WEBHOOK_URL = os.environ.get("INFERBILL_ALERT_WEBHOOK_URL", "")
# Key of the HMAC-SHA256 signature on alert webhooks (X-Inferbill-Signature).
INFERBILL_ALERT_WEBHOOK_SECRET = os.environ.get("INFERBILL_ALERT_WEBHOOK_SECRET") or SECRET_KEY

EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "inferbill@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}
