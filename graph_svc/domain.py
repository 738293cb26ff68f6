"""graph_svc business rules: accounts, sessions and the follow graph.

Follower and following counts (which decide celebrity status) are derived
from the follow lists, not counted alongside them. A follow writes, in this
order: the edge (lightweight transaction on `follows`), both list rows with
the follow event (one logged batch: the event is durable exactly when the
rows are), then a recount of the two users' counts (graph_svc/store.py,
"Counts"), then publishes the event. Counters made that last step a separate
non-idempotent write, so a crash before it, or a timeout that may or may not
have applied it, left the count wrong for good. A recount is idempotent and
reads the rows as they are, so whatever was lost is repaired by the next
recount of the same user, which comes from any of:

- the client retrying the call (a repeated follow or unfollow recounts too);
- the follow event: `repair_counts` recounts both users of every follow event
  it is given, and every event whose rows were written is published by the
  outbox relay even if the process died, so a consumer of the follows topic
  calling it (graph_svc's count-repair loop) closes the gap within seconds;
- any later follow or unfollow of the same users.

An unfollow deletes the list rows (with its event) and recounts before it
removes the edge: the edge is how a repeated unfollow finds when the follow
happened, so a crash at any earlier step leaves it for the retry to finish
with. Removing the edge first left list rows, counted as followers, that
nothing could find again.

A follow of the same pair running alongside an unfollow can write the rows
again after the unfollow deleted them (it found the edge still there). So after
removing the edge the unfollow looks for the rows once more, and a follow, after
writing them, reads the edge again: whichever of the two comes last sees the
other's work and deletes the rows (`_drop_lists`). Both reads are quorum reads:
each looks after the other's write was acknowledged by a quorum.

Recounts of the same user in one process share runs (`SharedRuns`): a
celebrity gaining followers quickly costs one recount at a time, not one per
follow, and each caller still waits for a recount that started after its
own write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from common import deadlines
from common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from common.events import MALFORMED, event_int
from common.ids import IdGenerator
from common.kafka import TOPIC_FOLLOWS
from common.limits import UNKNOWN_ADDRESS, LoginAttempt, LoginGuard, UserLimits, address_subject
from common.outbox import Event, Outbox
from common.pagination import PageTokens, scope, unshared_tokens
from common.worker import apply_each, skip_event
from graph_svc.accounts import Account, Passwords, login_key, username_key, validate_password, validate_username
from graph_svc.relations import RelationStore, refuse_follow_across_block
from graph_svc.sessions import Sessions, Tokens
from graph_svc.store import FollowEdge, GraphStore, follow_bucket
from graph_svc.tokens import TokenSigner

log = logging.getLogger(__name__)

BAD_LOGIN = "username or password is wrong"
WRONG_PASSWORD = "wrong password"
# Accounts one ListFollowingIds call lists by default (CHIRP_FOLLOWING_LIST_LIMIT);
# beyond it callers ask about specific ids, at most FOLLOWING_AMONG_MAX per call.
FOLLOWING_IDS_LIMIT = 10_000
FOLLOWING_AMONG_MAX = 1000
# A real hash to verify against when the username is unknown, so both failures
# take the same time.
_DUMMY_PASSWORD = "not-a-real-password"
# Users recounted at once when repairing from a batch of follow events.
REPAIR_CONCURRENCY = 16
# graph_svc's consumer of its own follow events, which repairs counts from them (main.py).
COUNTS_GROUP = "chirp-follow-counts"

K = TypeVar("K", bound=Hashable)


class SharedRuns(Generic[K]):
    """Runs `run(key)` for callers that each need a run started after they asked,
    sharing runs between callers of the same key: while one runs, later callers
    all wait for the single next one. So a key has one run going and at most one
    waiting however many callers pile up, and no caller is answered by a run
    that started before its call."""

    def __init__(self, run: Callable[[K], Awaitable[Any]]) -> None:
        self._run = run
        self._running: dict[K, asyncio.Future[None]] = {}
        self._next: dict[K, asyncio.Future[None]] = {}

    async def __call__(self, key: K) -> None:
        upcoming = self._next.get(key)
        if upcoming is None:
            upcoming = deadlines.shared_task(self._after(key, self._running.get(key)))
            upcoming.add_done_callback(_retrieve)
            self._next[key] = upcoming
        # Shielded: a caller giving up (its deadline) does not cancel the others' run.
        await asyncio.shield(upcoming)

    async def _after(self, key: K, previous: asyncio.Future[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own callers'
        this = self._next.pop(key)  # from now on a caller needs the run after this one
        self._running[key] = this
        try:
            await self._run(key)
        finally:
            if self._running.get(key) is this:
                del self._running[key]


def _retrieve(future: asyncio.Future[None]) -> None:
    # Every waiter may have given up; the failure still must not be logged as never retrieved.
    if not future.cancelled():
        future.exception()


class HasValue(Protocol):
    """A consumed message (confluent_kafka.Message): only its value is read."""

    def value(self) -> bytes | None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ms_precision(at: datetime) -> datetime:
    """CQL timestamps keep milliseconds; keep the same so replies match reads."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Session:
    access_token: str
    expires_at: datetime
    account: Account
    refresh_token: str
    refresh_expires_at: datetime

    @classmethod
    def of(cls, tokens: Tokens, account: Account) -> Session:
        return cls(tokens.access_token, tokens.expires_at, account, tokens.refresh_token, tokens.refresh_expires_at)


@dataclass(frozen=True)
class Page:
    accounts: list[Account]
    next_page_token: str


class Graph:
    def __init__(
        self,
        store: GraphStore,
        outbox: Outbox,
        passwords: Passwords,
        signer: TokenSigner,
        ids: IdGenerator,
        clock: Callable[[], datetime] = _utcnow,
        following_ids_limit: int = FOLLOWING_IDS_LIMIT,
        page_tokens: PageTokens | None = None,
        limits: UserLimits | None = None,
        logins: LoginGuard | None = None,
        blocks: RelationStore | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self._sessions = sessions or Sessions.unshared(signer, ids, clock)
        self._blocks = blocks
        self._following_ids_limit = following_ids_limit
        self._limits = limits or UserLimits.unlimited()
        self._logins = logins or LoginGuard.unlimited()
        self._page_tokens = page_tokens or unshared_tokens()
        self._store = store
        self._outbox = outbox
        self._passwords = passwords
        self._signer = signer
        self._ids = ids
        self._clock = clock
        self._dummy_hash: str | None = None
        self._follower_recounts: SharedRuns[tuple[int, int]] = SharedRuns(
            lambda key: store.recount_followers(key[0], [key[1]])
        )
        self._following_recounts: SharedRuns[int] = SharedRuns(lambda user: store.recount_following(user))

    # ---- accounts -------------------------------------------------------------

    async def sign_up(self, username: str, password: str, client_address: str = UNKNOWN_ADDRESS) -> Account:
        validate_username(username)
        validate_password(password)
        # Per client address, before the name is read or the password hashed.
        await self._limits.take("signup", address_subject(client_address))
        key = username_key(username)
        if await self._store.user_id_by_name(key) is not None:
            raise AlreadyExists(f"username {username!r} is taken", field="username")
        account = Account(
            user_id=self._ids.next_id(),
            username=username,
            created_at=_ms_precision(self._clock()),
            password_hash=await self._passwords.hash(password),
        )
        # The user row goes first: a crash before the claim leaves an unreachable
        # row, never a username that points at nothing.
        await self._store.insert_user(account)
        if not await self._store.claim_username(key, account.user_id):
            await self._store.delete_user(account.user_id)
            raise AlreadyExists(f"username {username!r} is taken", field="username")
        return account

    async def sign_in(self, username: str, password: str, client_address: str = UNKNOWN_ADDRESS) -> Session:
        """Failed logins are throttled (common/limits.py) before anything else, by the name
        as typed: an unknown name is throttled like a real one, and a locked account
        answers 429 without checking the password."""
        attempt = await self._logins.begin(username_key(username), client_address)
        try:
            session = await self._check_password(username, password)
        except Unauthenticated:
            raise
        except (Exception, asyncio.CancelledError):
            # An outage is not a wrong password, nor is a check cut short (the call's
            # deadline, the client gone: asyncio.CancelledError), which told no one anything.
            await self._give_back_anyway(attempt)
            raise
        await self._logins.give_back(attempt)
        return session

    async def _give_back_anyway(self, attempt: LoginAttempt) -> None:
        """The give-back of an attempt whose check failed or was cut short: shielded from a
        second cancellation, and never in the place of the error that ended the check."""
        try:
            await asyncio.shield(self._logins.give_back(attempt))
        except Exception as exc:  # noqa: BLE001 - the check's own error is the one to raise
            log.warning("a login attempt could not be given back", extra={"error": repr(exc)})

    async def _check_password(self, username: str, password: str) -> Session:
        if not username or not password or len(password) > 1024:
            raise Unauthenticated(BAD_LOGIN)
        key = login_key(username)
        user_id = await self._store.user_id_by_name(key) if key is not None else None
        account = await self._store.get_user(user_id) if user_id is not None else None
        if account is None:
            await self._passwords.verify(await self._dummy(), password)
            raise Unauthenticated(BAD_LOGIN)
        if not await self._passwords.verify(account.password_hash, password):
            raise Unauthenticated(BAD_LOGIN)
        return Session.of(await self._sessions.start(account.user_id, account.password_hash), account)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._passwords.hash(_DUMMY_PASSWORD)
        return self._dummy_hash

    async def get_user(self, user_id: int) -> Account:
        _check_id(user_id)
        account = await self._store.get_user(user_id)
        if account is None:
            raise NotFound(f"user {user_id} does not exist")
        return account

    async def get_users(self, user_ids: list[int]) -> list[Account]:
        if len(user_ids) > 500:
            raise InvalidArgument("at most 500 user ids per call", field="user_ids")
        return await self._store.get_users(list(dict.fromkeys(user_ids)))

    # ---- sessions (graph_svc/sessions.py) ---------------------------------------

    async def refresh_session(self, refresh_token: str) -> Session:
        user_id, tokens = await self._sessions.refresh(refresh_token)
        account = await self._store.get_user(user_id)
        if account is None:
            await self._sessions.end(user_id, tokens.session_id)
            raise Unauthenticated("this account no longer exists")
        return Session.of(tokens, account)

    async def sign_out(self, user_id: int, session_id: int | None) -> None:
        """Ends the session of the calling access token; a token from before sessions had
        ids has no refresh token to revoke."""
        if session_id is not None:
            await self._sessions.end(user_id, session_id)

    async def change_password(
        self, user_id: int, old_password: str, new_password: str, client_address: str = UNKNOWN_ADDRESS
    ) -> None:
        """Ends every session of the user. A wrong old password counts as a failed login (a
        stolen access token must not allow unthrottled guessing)."""
        validate_password(new_password)
        account = await self._store.get_user(user_id)
        if account is None:
            raise Unauthenticated("this account no longer exists")
        attempt = await self._logins.begin(username_key(account.username), client_address)
        try:
            right = 0 < len(old_password) <= 1024 and await self._passwords.verify(account.password_hash, old_password)
        except (Exception, asyncio.CancelledError):  # an outage, or a check cut short (see sign_in)
            await self._give_back_anyway(attempt)
            raise
        if not right:
            raise Unauthenticated(WRONG_PASSWORD)
        await self._logins.give_back(attempt)
        await self._sessions.replace_password(user_id, await self._passwords.hash(new_password))

    async def lookup(self, username: str) -> Account:
        """The user with this name, ignoring case. A name no account can have is invalid
        (the sign-up rules), not unknown."""
        user_id = await self._store.user_id_by_name(username_key(validate_username(username)))
        account = await self._store.get_user(user_id) if user_id is not None else None
        if account is None:
            raise NotFound(f"no user is called {username!r}")
        return account

    async def followed_by(self, viewer: int | None, user_ids: Sequence[int]) -> set[int]:
        """Which of `user_ids` `viewer` follows, in one read of their follows (up to 100
        ids); nobody without a viewer, and never the viewer themselves."""
        others = [u for u in dict.fromkeys(user_ids) if u != viewer]
        if viewer is None or not others:
            return set()
        return set(await self._store.follows_among(viewer, others))

    # ---- follows --------------------------------------------------------------

    async def follow(self, follower: int, followee: int) -> None:
        _check_id(followee)
        if follower == followee:
            raise InvalidArgument("you cannot follow yourself", field="user_id")
        await self._limits.take("follow", follower)
        await self.get_user(followee)
        if self._blocks is not None:
            await refuse_follow_across_block(self._blocks, follower, followee)
        await self._follow(follower, followee)

    async def _follow(self, follower: int, followee: int, again: bool = False) -> None:
        created, at = await self._store.add_edge(follower, followee, _ms_precision(self._clock()))
        event = self._event("follow", follower, followee, at)
        # Written again on a repeated follow too: that repairs lists (and, by the recount,
        # counts) a crash cut short.
        await self._store.write_follow_lists(follower, followee, at, event)
        if not created and not again and not await self._store.follow_listed(follower, followee, at):
            # An unfollow deleted this edge's rows and has not removed the edge (it died
            # first, or is about to): rows written again at the follow's time stay under
            # its delete (graph_svc/store.py). Finish that unfollow, then follow anew.
            await self.remove_follow(follower, followee)
            await self._follow(follower, followee, again=True)
            return
        # Before the event goes out: the fan-out reads the followee's count when it gets it.
        await self._recount(follower, followee, at)
        self._outbox.publish_soon(event)
        # A quorum read is enough: an unfollow whose edge removal this read cannot see
        # yet looks for these rows after that removal (`remove_follow`), and finds them.
        edge = await self._store.edge_time(follower, followee)
        if edge != at:
            # An unfollow (or a block) that read the edge before these rows were written
            # has removed it since (and a newer follow may have made it again): these rows
            # would be listed and counted with no edge left for any unfollow to find them
            # by. The follow came first; undo it.
            await self._drop_lists(follower, followee, at, still_following=edge is not None)
            return
        if self._blocks is not None:
            # A block that landed since the first look removed follows before this edge
            # existed (graph_svc/relations.py): undo this one.
            try:
                await refuse_follow_across_block(self._blocks, follower, followee)
            except PermissionDenied:
                await self.remove_follow(follower, followee)
                raise

    async def unfollow(self, follower: int, followee: int) -> None:
        _check_id(followee)
        if follower == followee:
            return  # nobody follows themselves, and unfollowing a non-followed user is fine (API.md)
        await self._limits.take("follow", follower)
        await self.get_user(followee)
        await self.remove_follow(follower, followee)

    async def remove_follow(self, follower: int, followee: int) -> None:
        """Unfollow without the caller's rate limit: a block removes both directions with it."""
        at = await self._store.edge_time(follower, followee)
        if at is None:
            return
        event = self._event("unfollow", follower, followee, at)
        # The edge goes last: see the module docstring.
        await self._store.delete_follow_lists(follower, followee, at, event)
        await self._recount(follower, followee, at)
        await self._store.remove_edge(follower, followee, at)
        self._outbox.publish_soon(event)
        # A repeated follow that found the edge before it went may have written its rows
        # again since they were deleted. If it wrote them before this read, they are
        # deleted here; if after, it finds the edge gone and deletes them itself.
        if await self._store.follow_listed(follower, followee, at):
            try:
                still_following = await self._store.edge_time(follower, followee) is not None
            except Exception:  # noqa: BLE001 - the edge is gone: a retry would find nothing to finish
                log.warning("cannot read the edge again; dropping the rows as still followed")
                still_following = True  # the safe event: a follow adds timeline entries, an unfollow removes them
            await self._drop_lists(follower, followee, at, still_following)

    async def _drop_lists(self, follower: int, followee: int, at: datetime, still_following: bool) -> None:
        """Delete the list rows of the follow made at `at`, whose edge is gone, with an
        event after the follow event that listed them: an unfollow; or, when a newer
        follow of the pair made the edge again, a follow, so the fan-out does not take
        the followee's tweets out of a timeline that follows them (the count repair
        recounts the same lists for either)."""
        event = self._event("follow" if still_following else "unfollow", follower, followee, at)
        await self._store.delete_follow_lists(follower, followee, at, event)
        await self._recount(follower, followee, at)
        self._outbox.publish_soon(event)

    async def _recount(self, follower: int, followee: int, at: datetime) -> None:
        await asyncio.gather(self._following_recounts(follower), self._follower_recounts((followee, follow_bucket(at))))

    async def repair_counts(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Recount both users of every follow and unfollow event (payloads as `_event` writes
        them; others are ignored). Idempotent, so events may come any number of times, in
        any order. Returns how many recounts it ran."""
        followers: set[tuple[int, int]] = set()
        following: set[int] = set()
        for event in events:
            if event.get("type") not in ("follow", "unfollow"):
                # The follows topic carries nothing else: a newer producer's event.
                skip_event(COUNTS_GROUP, "unknown_type", "a follow event of an unknown type", event=str(event)[:200])
                continue
            try:
                at = datetime.fromtimestamp(event_int(event["followed_at_ms"]) / 1000, UTC)
                followee, follower = event_int(event["followee_id"]), event_int(event["follower_id"])
            except (*MALFORMED, OSError):
                # Failing on it would fail this batch, and every batch after, for good.
                skip_event(COUNTS_GROUP, "malformed", "a malformed follow event", event=str(event)[:200])
                continue
            followers.add((followee, follow_bucket(at)))
            following.add(follower)
        await apply_each(
            [
                *(partial(self._follower_recounts, key) for key in followers),
                *(partial(self._following_recounts, user) for user in following),
            ],
            REPAIR_CONCURRENCY,
        )
        return len(followers) + len(following)

    async def repair_counts_from(self, messages: Sequence[HasValue]) -> None:
        """`repair_counts` for a batch of the follows topic (a `common.worker.ConsumerLoop` apply)."""
        events = []
        for message in messages:
            try:
                event = json.loads(message.value() or b"")
            except ValueError:
                event = None
            if isinstance(event, dict):
                events.append(event)
            else:
                skip_event(COUNTS_GROUP, "malformed", "a malformed follow event")
        await self.repair_counts(events)

    def _event(self, kind: str, follower: int, followee: int, at: datetime) -> Event:
        return Event(
            event_id=self._ids.next_id(),
            topic=TOPIC_FOLLOWS,
            key=follower,
            payload={
                "type": kind,
                "follower_id": follower,
                "followee_id": followee,
                "at_ms": int(self._clock().timestamp() * 1000),
                "followed_at_ms": int(at.timestamp() * 1000),
            },
        )

    async def followers(self, user_id: int, page_size: int, page_token: str) -> Page:
        await self.get_user(user_id)
        after = self._cursor(page_token, "followers", user_id)
        edges = await self._store.followers(user_id, page_size + 1, after)
        return await self._page(edges, page_size, "followers", user_id)

    async def following(self, user_id: int, page_size: int, page_token: str) -> Page:
        await self.get_user(user_id)
        after = self._cursor(page_token, "following", user_id)
        edges = await self._store.following(user_id, page_size + 1, after)
        return await self._page(edges, page_size, "following", user_id)

    async def follower_ids(self, user_id: int, page_size: int, page_token: str) -> tuple[list[int], str]:
        _check_id(user_id)
        edges = await self._store.followers(user_id, page_size + 1, self._cursor(page_token, "follower_ids", user_id))
        return [e.user_id for e in edges[:page_size]], self._next_token(edges, page_size, "follower_ids", user_id)

    async def follower_count(self, user_id: int) -> int:
        """The count GetUser gives, from the counts row alone."""
        _check_id(user_id)
        return (await self._store.follower_counts([user_id])).get(user_id, 0)

    async def following_ids(self, user_id: int, among: Sequence[int] = ()) -> tuple[list[tuple[int, int]], bool]:
        """(followed user id, their follower count) for the accounts `user_id` follows, and
        whether the list stopped at the limit. With `among`, only those accounts are looked up."""
        _check_id(user_id)
        if among:
            if len(among) > FOLLOWING_AMONG_MAX:
                raise InvalidArgument(f"among_user_ids takes at most {FOLLOWING_AMONG_MAX} ids", field="among_user_ids")
            ids, truncated = await self._store.follows_among(user_id, among), False
        else:
            ids = await self._store.following_ids(user_id, self._following_ids_limit + 1)
            truncated = len(ids) > self._following_ids_limit
            ids = ids[: self._following_ids_limit]
        counts = await self._store.follower_counts(ids)
        return [(i, counts.get(i, 0)) for i in ids], truncated

    async def _page(self, edges: list[FollowEdge], page_size: int, kind: str, user_id: int) -> Page:
        accounts = await self._store.get_users([e.user_id for e in edges[:page_size]])
        return Page(accounts, self._next_token(edges, page_size, kind, user_id))

    def _cursor(self, token: str, kind: str, user_id: int) -> FollowEdge | None:
        """Where a page of `user_id`'s `kind` list continues; only a token made for that list is taken."""
        cursor = self._page_tokens.decode(token, scope(kind, user_id), 2)
        return FollowEdge(cursor[0], cursor[1]) if cursor else None

    def _next_token(self, edges: list[FollowEdge], page_size: int, kind: str, user_id: int) -> str:
        if len(edges) <= page_size:
            return ""
        last = edges[page_size - 1]
        return self._page_tokens.encode(scope(kind, user_id), (last.user_id, last.followed_at_ms))


def _check_id(user_id: int) -> None:
    if user_id <= 0:
        raise InvalidArgument("user_id must be a positive integer", field="user_id")
