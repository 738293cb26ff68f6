"""Apply the versioned CQL files in infra/cql/ in order; safe to re-run.

The keyspace is created first (replication from CHIRP_CQL_REPLICATION), then
every file whose version is not yet recorded in schema_migrations is applied
statement by statement. Statements are written IF NOT EXISTS, so a file cut
short by a crash is simply applied again.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cassandra.cluster import Cluster

CQL_DIR = Path(__file__).resolve().parent / "cql"
FILE_RE = re.compile(r"(\d{3})_[a-z0-9_]+\.cql")


def statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrations() -> list[tuple[int, Path]]:
    found = []
    for path in sorted(CQL_DIR.iterdir()):
        match = FILE_RE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="127.0.0.1", help="comma-separated contact points")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--keyspace", default="chirp")
    parser.add_argument("--replication", default="{'class': 'SimpleStrategy', 'replication_factor': 1}")
    args = parser.parse_args()

    cluster = Cluster(args.hosts.split(","), port=args.port, protocol_version=4)
    session = cluster.connect()
    session.default_timeout = 60
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {args.keyspace} WITH replication = {args.replication}")
    session.set_keyspace(args.keyspace)
    session.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text, applied_at timestamp)"
    )
    applied = {row.version for row in session.execute("SELECT version FROM schema_migrations")}
    for version, path in migrations():
        if version in applied:
            continue
        started = time.monotonic()
        for statement in statements(path.read_text()):
            session.execute(statement)
        session.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
            (version, path.name, datetime.now(UTC)),
        )
        print(f"applied {path.name} in {time.monotonic() - started:.1f}s")
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
