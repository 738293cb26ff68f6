"""Apply the versioned CQL files in infra/cql/ in order; safe to re-run.

1. The keyspace, with the replication given by --replication (the stack passes
   its topology's). A keyspace that exists with another replication is
   ALTERed to it. Raising the replication factor of a keyspace that holds
   data is not complete until a full repair has copied the data to the new
   replicas (`nodetool repair -full <keyspace>` on every node): until then a
   LOCAL_QUORUM read may be answered by two new, empty replicas. This tool
   says so when it alters a keyspace; it does not run the repair.
2. Every file whose version is not yet recorded in schema_migrations, statement
   by statement. Statements are written IF NOT EXISTS, so a file cut short by
   a crash is simply applied again.
3. Data steps (DATA_STEPS) whose file is applied and that are not yet recorded
   in data_migrations: rewrites of existing rows that CQL cannot express.
   Each is idempotent, so one cut short runs again from the start.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import re
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cassandra import ConsistencyLevel, InvalidRequest, Unavailable
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionException

CQL_DIR = Path(__file__).resolve().parent / "cql"
FILE_RE = re.compile(r"(\d{3})_[a-z0-9_]+\.cql")
DDL_TIMEOUT_SECONDS = 60.0
DATA_STEP_TIMEOUT_SECONDS = 60.0


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


# ---- keyspace replication ------------------------------------------------------------


def parse_replication(text: str) -> dict[str, str]:
    """A replication map as CQL writes it, e.g. "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3}"."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"--replication is not a map: {text!r}") from None
    if not isinstance(value, dict) or "class" not in value:
        raise ValueError(f"--replication needs a 'class': {text!r}")
    return {str(k): str(v) for k, v in value.items()}


def same_replication(current: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Equal once the class is short-named (system_schema stores the full Java name)."""

    def normalized(rep: Mapping[str, str]) -> dict[str, str]:
        return {k: (v.rsplit(".", 1)[-1] if k == "class" else str(v)) for k, v in rep.items()}

    return normalized(current) == normalized(wanted)


def cql_map(rep: Mapping[str, str]) -> str:
    def literal(key: str, value: str) -> str:
        return value if key != "class" and value.isdigit() else "'" + value.replace("'", "''") + "'"

    return "{" + ", ".join(f"'{k}': {literal(k, v)}" for k, v in rep.items()) + "}"


def ensure_keyspace(session: Session, keyspace: str, wanted: Mapping[str, str]) -> str:
    """Create or re-replicate the keyspace; returns what was done, for the log."""
    rows = list(
        session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,))
    )
    if not rows:
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {cql_map(wanted)}")
        return f"created keyspace {keyspace} with replication {cql_map(wanted)}"
    current = {str(k): str(v) for k, v in dict(rows[0].replication).items()}
    if same_replication(current, wanted):
        return ""
    session.execute(f"ALTER KEYSPACE {keyspace} WITH replication = {cql_map(wanted)}")
    return (
        f"changed the replication of keyspace {keyspace} from {cql_map(current)} to {cql_map(wanted)}. "
        f"If it holds data and a replication factor went up, run `nodetool repair -full {keyspace}` "
        "on every node before relying on the new replicas"
    )


KEYSPACE_VISIBLE_SECONDS = 60.0
SCHEMA_AGREEMENT_SECONDS = 60
QUORUM_SECONDS = 60.0
Result = TypeVar("Result")


def _asking_again(
    attempt: Callable[[], Result],
    passing: Callable[[Exception], str | None],
    seconds: float,
    sleep: Callable[[float], None],
) -> Result:
    """`attempt()`, asked again a second later while `passing` names its error a
    passing state of a cluster that has just started (the message it prints), until
    `seconds` have passed; any other error is raised at once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return attempt()
        except Exception as exc:
            waiting = passing(exc)
            if waiting is None or time.monotonic() > deadline:
                raise
            print(waiting)
            sleep(1.0)


# How the driver says a USE failed on some pools (cassandra/cluster.py, ResponseFuture).
POOL_KEYSPACE_FAILED = "Failed to set keyspace on all hosts"


def use_keyspace(
    session: Session,
    keyspace: str,
    seconds: float = KEYSPACE_VISIBLE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """USE the keyspace. On a cluster that has just started, a keyspace just created
    may not have reached the node a statement goes to: the driver's wait for schema
    agreement covers only the nodes it already knows to be up. Such a node answers
    that the keyspace does not exist; ask again, waiting for agreement, until it has.
    The coordinator's answer is an InvalidRequest; when the coordinator has it and
    another node does not, the driver's USE on that node's pool fails and comes back
    as a ConnectionException naming that InvalidRequest."""

    def not_there_yet(exc: Exception) -> str | None:
        on_a_pool = isinstance(exc, ConnectionException) and str(exc).startswith(POOL_KEYSPACE_FAILED)
        if not (isinstance(exc, InvalidRequest) or on_a_pool) or "does not exist" not in str(exc):
            return None
        session.cluster.control_connection.wait_for_schema_agreement(wait_time=5.0)
        return f"keyspace {keyspace} not yet on every node ({exc}); waiting for schema agreement"

    _asking_again(lambda: session.set_keyspace(keyspace), not_there_yet, seconds, sleep)


def execute_at_quorum(
    session: Session,
    query: str,
    params: Sequence[object] = (),
    seconds: float = QUORUM_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Any]:
    """Run a LOCAL_QUORUM statement of the migrations' own bookkeeping. Nodes that
    have just started open their CQL port before they see each other up in gossip, so
    the first coordinator may count too few live replicas and answer Unavailable, which
    is raised before anything is written: ask again, until `seconds` have passed."""

    def too_few_up(exc: Exception) -> str | None:
        # The driver tries the next host once; with one host up it ends in NoHostAvailable.
        errors = list(exc.errors.values()) if isinstance(exc, NoHostAvailable) else [exc]
        if not errors or not all(isinstance(e, Unavailable) for e in errors):
            return None
        return f"too few replicas up yet ({errors[0]}); waiting"

    return _asking_again(lambda: list(session.execute(query, params)), too_few_up, seconds, sleep)


# ---- data steps ----------------------------------------------------------------------

DataStep = Callable[[Sequence[str], int, str], Coroutine[object, object, str]]


async def recount_follow_counts(hosts: Sequence[str], port: int, keyspace: str) -> str:
    """009: follower and following counts move from counters to counts derived from the
    follow lists (graph_svc/store.py); fill them once from the lists as they are."""
    # Imported here: only this step needs the service's store, and it owns that CQL.
    from common.cql import CqlSession
    from common.outbox import Outbox
    from graph_svc.store import GraphStore

    cql = await CqlSession.connect(hosts, port, keyspace, DATA_STEP_TIMEOUT_SECONDS)
    try:
        store = GraphStore(cql, Outbox(cql, None))
        await store.prepare()
        followed, following = await store.recount_everyone()
    finally:
        cql.close()
    return f"recounted {followed} users' followers and {following} users' followings"


DATA_STEPS: dict[str, tuple[int, DataStep]] = {
    "009_follow_counts:recount": (9, recount_follow_counts),
}


# ---- main ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="127.0.0.1", help="comma-separated contact points")
    parser.add_argument("--host", dest="hosts", help="the same as --hosts")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--keyspace", default="chirp")
    parser.add_argument(
        "--replication",
        default="{'class': 'SimpleStrategy', 'replication_factor': 1}",
        help="the keyspace's replication map; an existing keyspace is altered to it",
    )
    args = parser.parse_args()
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        wanted = parse_replication(args.replication)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2

    # Quorum for our own bookkeeping: a node down while a version was recorded is not
    # the one that decides whether it is applied again.
    profile = ExecutionProfile(consistency_level=ConsistencyLevel.LOCAL_QUORUM, request_timeout=DDL_TIMEOUT_SECONDS)
    # Every DDL waits for the nodes that are up to agree on the schema before the next
    # statement: up to SCHEMA_AGREEMENT_SECONDS, not the driver's 10 s, which a cluster
    # just started on a busy host can take longer than.
    cluster = Cluster(
        hosts,
        port=args.port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        max_schema_agreement_wait=SCHEMA_AGREEMENT_SECONDS,
    )
    session = cluster.connect()
    try:
        done = ensure_keyspace(session, args.keyspace, wanted)
        if done:
            print(done)
        use_keyspace(session, args.keyspace)
        session.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text, applied_at timestamp)"
        )
        session.execute("CREATE TABLE IF NOT EXISTS data_migrations (name text PRIMARY KEY, applied_at timestamp)")
        applied = {row.version for row in execute_at_quorum(session, "SELECT version FROM schema_migrations")}
        for version, path in migrations():
            if version in applied:
                continue
            started = time.monotonic()
            for statement in statements(path.read_text()):
                session.execute(statement)
            execute_at_quorum(
                session,
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                (version, path.name, datetime.now(UTC)),
            )
            applied.add(version)
            print(f"applied {path.name} in {time.monotonic() - started:.1f}s")
        # After every file: a step may use tables of later files through the service's store.
        done_steps = {row.name for row in execute_at_quorum(session, "SELECT name FROM data_migrations")}
        for name, (version, step) in DATA_STEPS.items():
            if name in done_steps or version not in applied:
                continue
            started = time.monotonic()
            summary = asyncio.run(step(hosts, args.port, args.keyspace))
            execute_at_quorum(
                session, "INSERT INTO data_migrations (name, applied_at) VALUES (%s, %s)", (name, datetime.now(UTC))
            )
            print(f"ran {name} in {time.monotonic() - started:.1f}s: {summary}")
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
