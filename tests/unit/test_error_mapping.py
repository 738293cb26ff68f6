"""Errors by meaning: every class of error maps to the status its meaning calls for,
the status is built by grpcio-status, store errors are retried only when that is
safe, and every validation message names the request field that is wrong."""

from __future__ import annotations

import re
from typing import Any, cast

import grpc
import pytest
from cassandra import (
    AlreadyExists,
    ConsistencyLevel,
    DriverException,
    InvalidRequest,
    OperationTimedOut,
    OperationType,
    RateLimitReached,
    ReadFailure,
    ReadTimeout,
    Unauthorized,
    Unavailable,
    WriteTimeout,
    WriteType,
)
from cassandra.cluster import EXEC_PROFILE_DEFAULT, NoHostAvailable
from cassandra.connection import ConnectionBusy, ConnectionException, ConnectionShutdown
from cassandra.pool import NoConnectionsAvailable
from cassandra.protocol import (
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
    SyntaxException,
)
from cassandra.query import BatchType, SimpleStatement
from chirp.graph.v1 import graph_internal_pb2, graph_pb2
from chirp.tweet.v1 import tweet_internal_pb2, tweet_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from common import cql
from common.errors import (
    DEPENDENCY_DOWN_MESSAGE,
    DEPENDENCY_SLOW_MESSAGE,
    DETAILS_KEY,
    ERROR_DOMAIN,
    INTERNAL_MESSAGE,
    InvalidArgument,
    NotFound,
    classify,
    status_of,
)
from common.ids import IdGenerator
from common.interceptors import ServerInterceptor
from graph_svc.domain import Graph
from graph_svc.relations import Relations
from tweet_svc.domain import Tweets
from tweet_svc.service import TweetInternalService

SECRET = "db-7.internal:9042 keyspace chirp table users"
CQL = cql.CQL_UNAVAILABLE_ERRORS

# ---- store errors ---------------------------------------------------------------------

UNREACHABLE_OR_OVERLOADED: list[BaseException] = [
    NoHostAvailable(SECRET, {}),
    OperationTimedOut(SECRET),
    Unavailable(SECRET, consistency=ConsistencyLevel.LOCAL_QUORUM, required_replicas=2, alive_replicas=1),
    ReadTimeout(SECRET),
    WriteTimeout(SECRET, write_type=WriteType.SIMPLE),
    ConnectionException(SECRET),
    ConnectionShutdown(SECRET),
    ConnectionBusy(SECRET),
    NoConnectionsAvailable(SECRET),
    OverloadedErrorMessage(0x1001, SECRET, None),
    IsBootstrappingErrorMessage(0x1002, SECRET, None),
    RateLimitReached(OperationType.Write),
]

BAD_QUERY_OR_BUG: list[BaseException] = [
    InvalidRequest(SECRET),
    SyntaxException(0x2000, SECRET, None),
    Unauthorized(SECRET),
    AlreadyExists(keyspace="chirp", table=SECRET),
    ServerError(0x0000, SECRET, None),
    ReadFailure(SECRET),
    DriverException(SECRET),  # the base class: no longer "unavailable" as a whole
    KeyError(SECRET),
]


@pytest.mark.parametrize("error", UNREACHABLE_OR_OVERLOADED, ids=lambda e: type(e).__name__)
def test_unreachable_or_overloaded_store_is_unavailable(error: BaseException) -> None:
    status = classify(error, CQL)
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.message == DEPENDENCY_DOWN_MESSAGE
    assert status.reason == "DEPENDENCY_UNAVAILABLE"


@pytest.mark.parametrize("error", BAD_QUERY_OR_BUG, ids=lambda e: type(e).__name__)
def test_bad_query_is_internal_and_never_leaks(error: BaseException) -> None:
    status = classify(error, CQL)
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.message == INTERNAL_MESSAGE
    assert SECRET.encode() not in _details(status_of(error, CQL))


def test_driver_exception_base_is_not_listed_as_unavailable() -> None:
    assert DriverException not in CQL
    assert not issubclass(InvalidRequest, CQL)


# ---- domain errors and how the status is built -------------------------------------------


def test_domain_error_keeps_code_message_reason_and_field() -> None:
    status = status_of(InvalidArgument("user_id must be a positive integer", field="user_id"), CQL)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "user_id must be a positive integer"
    rich = status_pb2.Status.FromString(_details(status))
    assert rich.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rich.message == status.details
    info = _info(rich)
    assert (info.reason, info.domain, dict(info.metadata)) == ("INVALID_ARGUMENT", ERROR_DOMAIN, {"field": "user_id"})


def test_status_round_trips_through_grpcio_status_from_call() -> None:
    """What a client of ours sees parses with rpc_status.from_call (code and message agree)."""
    status = status_of(NotFound("user 7 does not exist"), CQL)
    call = _peer_call(status.code, status.details, status.trailing_metadata)
    rich = rpc_status.from_call(cast(grpc.Call, call))
    assert rich is not None and rich.message == "user 7 does not exist"
    assert _info(rich).reason == "NOT_FOUND"


# ---- errors from a peer service -------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer_code", "code", "message"),
    [
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, DEPENDENCY_DOWN_MESSAGE),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, DEPENDENCY_DOWN_MESSAGE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED, DEPENDENCY_SLOW_MESSAGE),
    ],
)
def test_peer_that_cannot_answer_now_stays_retryable(
    peer_code: grpc.StatusCode, code: grpc.StatusCode, message: str
) -> None:
    error = _peer_call(peer_code, f"failed to connect to all addresses; last error: {SECRET}")
    status = classify(error, (*CQL, grpc.aio.AioRpcError))
    assert (status.code, status.message) == (code, message)


def test_peer_refusal_written_for_clients_passes_through() -> None:
    sent = status_of(NotFound("user 7 does not exist", field="user_id"), CQL)
    error = _peer_call(sent.code, sent.details, sent.trailing_metadata)
    # main.py files list AioRpcError among dependency errors; the status code still decides.
    status = classify(error, (*CQL, grpc.aio.AioRpcError))
    assert status.code == grpc.StatusCode.NOT_FOUND
    assert status.message == "user 7 does not exist"
    assert (status.reason, status.metadata) == ("NOT_FOUND", {"field": "user_id"})


@pytest.mark.parametrize(
    "peer_code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED],
)
def test_peer_refusal_without_our_error_info_passes_code_not_text(peer_code: grpc.StatusCode) -> None:
    foreign = status_pb2.Status(code=peer_code.value[0], message=SECRET)
    foreign.details.add().Pack(error_details_pb2.ErrorInfo(reason="X", domain="elsewhere.example"))
    for trailing in ((), rpc_status.to_status(foreign).trailing_metadata):
        status = classify(_peer_call(peer_code, SECRET, trailing), CQL)
        assert status.code == peer_code
        assert SECRET not in status.message and status.message


@pytest.mark.parametrize(
    "peer_code",
    [
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DATA_LOSS,
    ],
)
def test_any_other_peer_error_is_internal(peer_code: grpc.StatusCode) -> None:
    status = classify(_peer_call(peer_code, SECRET), (*CQL, grpc.aio.AioRpcError))
    assert (status.code, status.message) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


# ---- the interceptor sends what classify says ---------------------------------------------


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str, Any] | None = None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> float:
        return 5.0

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details, trailing_metadata)
        raise _Aborted


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest(SECRET), grpc.StatusCode.INTERNAL),
        (NoHostAvailable(SECRET, {}), grpc.StatusCode.UNAVAILABLE),
        (NotFound("tweet 3 does not exist"), grpc.StatusCode.NOT_FOUND),
    ],
    ids=["bad-query", "store-down", "domain"],
)
async def test_interceptor_aborts_with_the_rich_status(error: BaseException, code: grpc.StatusCode) -> None:
    async def handler(request: object, context: object) -> object:
        raise error

    wrapped = ServerInterceptor(CQL)._wrap(handler, "chirp.test.v1.TestService", "Do")
    context = _Context()
    with pytest.raises(_Aborted):
        await wrapped(object(), cast(grpc.aio.ServicerContext, context))
    assert context.aborted is not None
    sent_code, details, trailing = context.aborted
    rich = status_pb2.Status.FromString(dict(trailing)[DETAILS_KEY])
    assert sent_code == code and rich.code == code.value[0] and rich.message == details
    assert SECRET not in details


# ---- store errors: retried only when repeating is harmless ---------------------------------

POLICY = cql.RetryPolicy()
RETRY_NEXT, RETRY_SAME, RETHROW = cql.RetryPolicy.RETRY_NEXT_HOST, cql.RetryPolicy.RETRY, cql.RetryPolicy.RETHROW


def _statement(query: str) -> SimpleStatement:
    return SimpleStatement(query, is_idempotent=cql.is_idempotent(query))


UPSERT = _statement("INSERT INTO tweets (tweet_id, text) VALUES (?, ?)")
LWT = _statement("INSERT INTO follows (follower_id, followee_id) VALUES (?, ?) IF NOT EXISTS")
COUNTER = _statement("UPDATE user_stats SET follower_count = follower_count + ? WHERE user_id = ?")


@pytest.mark.parametrize(
    ("query", "idempotent"),
    [
        ("SELECT a FROM t WHERE k = ?", True),
        ("INSERT INTO t (k, a) VALUES (?, ?)", True),
        ("UPDATE t USING TIMESTAMP ? SET a = ? WHERE k = ?", True),
        ("DELETE FROM t WHERE k = ? AND c = ?", True),
        ("INSERT INTO t (k) VALUES (?) IF NOT EXISTS", False),
        ("DELETE FROM t WHERE k = ? IF EXISTS", False),
        ("UPDATE t SET n = ? WHERE k = ? IF n = ?", False),
        ("UPDATE t SET n = n + ? WHERE k = ?", False),
        ("UPDATE t SET l = ? + l WHERE k = ?", False),
        ("INSERT INTO t (k, at) VALUES (?, now())", False),
    ],
)
def test_idempotence_is_judged_from_the_statement(query: str, idempotent: bool) -> None:
    assert cql.is_idempotent(query) is idempotent


def test_a_batch_is_idempotent_only_if_every_statement_is() -> None:
    upsert = _statement("INSERT INTO tweets (tweet_id, text) VALUES (1, 'a')")
    lwt = _statement("INSERT INTO follows (follower_id, followee_id) VALUES (1, 2) IF NOT EXISTS")
    plain = cql.Batch(BatchType.LOGGED)
    plain.add(upsert)
    plain.add(upsert)
    assert plain.is_idempotent
    mixed = cql.Batch(BatchType.UNLOGGED)
    mixed.add(upsert)
    mixed.add(lwt)
    assert not mixed.is_idempotent
    assert not cql.Batch(BatchType.COUNTER).is_idempotent


def test_write_timeouts_are_retried_elsewhere_only_for_idempotent_writes() -> None:
    def decide(statement: SimpleStatement, write_type: int, retry_num: int = 0) -> int:
        return int(POLICY.on_write_timeout(statement, ConsistencyLevel.LOCAL_QUORUM, write_type, 2, 1, retry_num)[0])

    assert decide(UPSERT, WriteType.SIMPLE) == RETRY_NEXT
    assert decide(UPSERT, WriteType.SIMPLE, retry_num=cql.MAX_RETRIES) == RETHROW
    assert decide(LWT, WriteType.CAS) == RETHROW
    assert decide(COUNTER, WriteType.COUNTER) == RETHROW
    # Even a statement wrongly marked idempotent is not repeated as a CAS or counter write.
    assert decide(UPSERT, WriteType.CAS) == RETHROW and decide(UPSERT, WriteType.COUNTER) == RETHROW


def test_a_batchlog_timeout_sends_an_idempotent_batch_again_to_the_same_coordinator() -> None:
    # None of its writes was sent; the error's consistency (the batchlog copy's ONE) is not kept.
    for retry_num in range(cql.BATCH_LOG_RETRIES):
        decision = POLICY.on_write_timeout(UPSERT, ConsistencyLevel.ONE, WriteType.BATCH_LOG, 1, 0, retry_num)
        assert decision == (RETRY_SAME, None)
    last = POLICY.on_write_timeout(UPSERT, ConsistencyLevel.ONE, WriteType.BATCH_LOG, 1, 0, cql.BATCH_LOG_RETRIES)
    assert last[0] == RETHROW
    # The copy may still land and be replayed: a batch that must not run twice is not sent again.
    assert POLICY.on_write_timeout(COUNTER, ConsistencyLevel.ONE, WriteType.BATCH_LOG, 1, 0, 0)[0] == RETHROW


def test_reads_and_refusals_are_retried_on_another_replica() -> None:
    read = _statement("SELECT a FROM t WHERE k = ?")
    assert POLICY.on_read_timeout(read, ConsistencyLevel.LOCAL_QUORUM, 2, 1, False, 0)[0] == RETRY_NEXT
    assert POLICY.on_read_timeout(read, ConsistencyLevel.LOCAL_QUORUM, 2, 1, False, cql.MAX_RETRIES)[0] == RETHROW
    # Unavailable and overloaded mean no replica ran it: safe even for an LWT.
    assert POLICY.on_unavailable(LWT, ConsistencyLevel.LOCAL_QUORUM, 2, 1, 0)[0] == RETRY_NEXT
    assert POLICY.on_unavailable(LWT, ConsistencyLevel.LOCAL_QUORUM, 2, 1, 1)[0] == RETHROW
    overloaded = OverloadedErrorMessage(0x1001, "overloaded", None)
    assert POLICY.on_request_error(COUNTER, ConsistencyLevel.LOCAL_QUORUM, overloaded, 0)[0] == RETRY_NEXT


def test_a_lost_connection_repeats_only_idempotent_statements() -> None:
    lost = ConnectionShutdown("connection closed")
    assert POLICY.on_request_error(UPSERT, ConsistencyLevel.LOCAL_QUORUM, lost, 0)[0] == RETRY_NEXT
    assert POLICY.on_request_error(LWT, ConsistencyLevel.LOCAL_QUORUM, lost, 0)[0] == RETHROW
    assert POLICY.on_request_error(COUNTER, ConsistencyLevel.LOCAL_QUORUM, lost, 0)[0] == RETHROW
    assert POLICY.on_request_error(UPSERT, ConsistencyLevel.LOCAL_QUORUM, lost, cql.MAX_RETRIES)[0] == RETHROW


def test_only_point_and_slice_reads_speculate() -> None:
    assert cql.profile_for("SELECT a FROM t WHERE k = ? LIMIT ?") == cql.READ_PROFILE
    for query in (
        "INSERT INTO t (k) VALUES (?)",
        "SELECT COUNT(*) FROM t WHERE k = ?",
        "SELECT DISTINCT k FROM t",
        "SELECT release_version FROM system.local",
    ):
        assert cql.profile_for(query) != cql.READ_PROFILE, query


def test_a_read_at_a_serial_consistency_does_not_speculate() -> None:
    """Each speculative copy would be a Paxos round competing with the first."""
    read = SimpleStatement("SELECT a FROM t WHERE k = %s")
    assert cql._profile_of(read) == cql.READ_PROFILE
    for level in (ConsistencyLevel.LOCAL_SERIAL, ConsistencyLevel.SERIAL):
        read.consistency_level = level
        assert cql._profile_of(read) == EXEC_PROFILE_DEFAULT


def test_profiles_use_the_configured_dc_and_consistency() -> None:
    profiles = cql.execution_profiles("dc-east", "LOCAL_ONE", 1.5)
    for profile in profiles.values():
        assert profile.load_balancing_policy._child_policy.local_dc == "dc-east"
        assert profile.consistency_level == ConsistencyLevel.LOCAL_ONE
        assert isinstance(profile.retry_policy, cql.RetryPolicy)
    speculative = profiles[cql.READ_PROFILE].speculative_execution_policy
    assert (speculative.delay, speculative.max_attempts) == (
        cql.SPECULATIVE_DELAY_SECONDS,
        cql.SPECULATIVE_ATTEMPTS,
    )
    with pytest.raises(ValueError, match="SOMETIMES"):
        cql.execution_profiles("dc-east", "SOMETIMES", 1.5)


# ---- validation messages name the field that is wrong ------------------------------------------


class _Unused:
    """A dependency the validation must not reach: any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"validation reached the dependency ({name})")


def _tweets() -> Tweets:
    unused = cast(Any, _Unused())
    return Tweets(unused, unused, unused, unused, unused, IdGenerator(1))


def _graph() -> Graph:
    unused = cast(Any, _Unused())
    return Graph(unused, unused, unused, unused, IdGenerator(1))


def _relations() -> Relations:
    unused = cast(Any, _Unused())
    return Relations(unused, unused)


# An unsigned token of the old format, {"before":-1,"k":"tweets"}: refused, naming the field.
_bad_before = "eyJiZWZvcmUiOi0xLCJrIjoidHdlZXRzIn0"
VALIDATION_CASES: list[tuple[str, Any, type[Message], str]] = [
    ("GetTweet 0", lambda: _tweets().get(0), tweet_pb2.GetTweetRequest, "tweet_id"),
    ("DeleteTweet -1", lambda: _tweets().delete(5, -1), tweet_pb2.DeleteTweetRequest, "tweet_id"),
    ("LikeTweet 0", lambda: _tweets().set_like(5, 0, True), tweet_pb2.LikeTweetRequest, "tweet_id"),
    ("UnlikeTweet 0", lambda: _tweets().set_like(5, 0, False), tweet_pb2.UnlikeTweetRequest, "tweet_id"),
    ("ListUserTweets 0", lambda: _tweets().by_author(0, 20, ""), tweet_pb2.ListUserTweetsRequest, "user_id"),
    ("ListUserTweets -3", lambda: _tweets().by_author(-3, 20, ""), tweet_pb2.ListUserTweetsRequest, "user_id"),
    (
        "ListUserTweets token",
        lambda: _tweets().by_author(7, 20, _bad_before),
        tweet_pb2.ListUserTweetsRequest,
        "page_token",
    ),
    (
        "BatchGetTweets 501",
        lambda: _tweets().get_many([1] * 501),
        tweet_internal_pb2.BatchGetTweetsRequest,
        "tweet_ids",
    ),
    (
        "BatchGetLikeCounts 501",
        lambda: _tweets().like_counts([1] * 501),
        tweet_internal_pb2.BatchGetLikeCountsRequest,
        "tweet_ids",
    ),
    (
        "BatchGetLikeCounts 0",
        lambda: _tweets().like_counts([5, 0]),
        tweet_internal_pb2.BatchGetLikeCountsRequest,
        "tweet_ids",
    ),
    (
        "ListRecentTweetIds 501",
        lambda: _tweets().recent_ids([1] * 501, 0, 20),
        tweet_internal_pb2.ListRecentTweetIdsRequest,
        "author_ids",
    ),
    (
        "BatchGetTweets 0",
        lambda: _tweets().get_many([5, 0]),
        tweet_internal_pb2.BatchGetTweetsRequest,
        "tweet_ids",
    ),
    (
        "ListRecentTweetIds before -1",
        lambda: _tweets().recent_ids([5], -1, 20),
        tweet_internal_pb2.ListRecentTweetIdsRequest,
        "before_tweet_id",
    ),
    (
        "ListRecentTweetIds author 0",
        lambda: _tweets().recent_ids([5, 0], 0, 20),
        tweet_internal_pb2.ListRecentTweetIdsRequest,
        "author_ids",
    ),
    (
        "ListRecentTweetIds limit -1",
        lambda: TweetInternalService(_tweets()).ListRecentTweetIds(
            tweet_internal_pb2.ListRecentTweetIdsRequest(author_ids=[5], limit_per_author=-1), cast(Any, None)
        ),
        tweet_internal_pb2.ListRecentTweetIdsRequest,
        "limit_per_author",
    ),
    ("GetRelations 0", lambda: _relations().relations(5, [7, 0]), graph_internal_pb2.GetRelationsRequest, "user_ids"),
    ("CreateTweet text", lambda: _tweets().create(5, "   ", ""), tweet_pb2.CreateTweetRequest, "text"),
    (
        "CreateTweet key",
        lambda: _tweets().create(5, "hello", "x" * 129),
        tweet_pb2.CreateTweetRequest,
        "idempotency_key",
    ),
    ("GetUser 0", lambda: _graph().get_user(0), graph_pb2.GetUserRequest, "user_id"),
    ("FollowUser 0", lambda: _graph().follow(5, 0), graph_pb2.FollowUserRequest, "user_id"),
    ("UnfollowUser -1", lambda: _graph().unfollow(5, -1), graph_pb2.UnfollowUserRequest, "user_id"),
    ("ListFollowers 0", lambda: _graph().followers(0, 20, ""), graph_pb2.ListFollowersRequest, "user_id"),
    ("ListFollowing 0", lambda: _graph().following(0, 20, ""), graph_pb2.ListFollowingRequest, "user_id"),
    (
        "ListFollowerIds 0",
        lambda: _graph().follower_ids(0, 20, ""),
        graph_internal_pb2.ListFollowerIdsRequest,
        "user_id",
    ),
    ("ListFollowingIds 0", lambda: _graph().following_ids(0), graph_internal_pb2.ListFollowingIdsRequest, "user_id"),
    (
        "ListFollowingIds among",
        lambda: _graph().following_ids(5, [1] * 1001),
        graph_internal_pb2.ListFollowingIdsRequest,
        "among_user_ids",
    ),
    ("BatchGetUsers 501", lambda: _graph().get_users([1] * 501), graph_internal_pb2.BatchGetUsersRequest, "user_ids"),
    (
        "CreateUser name",
        lambda: _graph().sign_up("no spaces allowed", "correct horse"),
        graph_pb2.CreateUserRequest,
        "username",
    ),
    ("CreateUser password", lambda: _graph().sign_up("ada", "short"), graph_pb2.CreateUserRequest, "password"),
]


@pytest.mark.parametrize(
    ("call", "request_type", "field"), [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES]
)
async def test_validation_names_the_request_field(call: Any, request_type: type[Message], field: str) -> None:
    assert field in request_type.DESCRIPTOR.fields_by_name, f"{field} is not a field of {request_type.__name__}"
    with pytest.raises(InvalidArgument) as caught:
        await call()
    error = caught.value
    assert error.metadata == {"field": field}
    # The message names the same field (its words, for the lists and the header).
    words = error.message.lower().replace("-", " ").replace("_", " ")
    assert field.replace("_", " ") in words or field.removesuffix("s").replace("_", " ") in words, error.message
    others = {f for f in request_type.DESCRIPTOR.fields_by_name} - {field}
    named_others = {f for f in others | {"tweet_id", "user_id"} if f != field and re.search(rf"\b{f}\b", error.message)}
    assert not named_others, f"{error.message!r} names {named_others}"


# ---- helpers ------------------------------------------------------------------------------


def _details(status: grpc.Status) -> bytes:
    value = dict(status.trailing_metadata)[DETAILS_KEY]
    return value if isinstance(value, bytes) else value.encode()


def _info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info)
    return info


def _peer_call(code: grpc.StatusCode, details: str, trailing: Any = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details, None)
