"""What the benchmarks share: the repository root, the benchmark database, manage.py.

Imported as `_common` (each bench is run as a script, so its own directory is on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def database_url(default: str) -> str:
    """DATABASE_URL, or `default` when it is unset; refuses any but PostgreSQL, the
    database the benchmarks measure."""
    url = os.environ.get("DATABASE_URL") or default
    if not url.startswith(("postgres://", "postgresql://")):
        script = Path(sys.argv[0]).name
        raise SystemExit(f"bench/{script} measures PostgreSQL: DATABASE_URL=postgres://…")
    return url


def database_ensure(url: str, *, fresh: bool = False) -> None:
    """Create the database named in `url` if it does not exist; with `fresh`, drop it
    first (only a database whose name says it is for benchmarks)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if fresh:
            if "bench" not in name:
                raise SystemExit(f"--fresh drops the database: refusing for '{name}' (no 'bench')")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}", flush=True)


def manage(*args: str, env: dict[str, str]) -> str:
    """Run `manage.py *args` in a subprocess; its stdout, or exit with its output."""
    done = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"manage.py {args[0]} failed")
    return done.stdout
