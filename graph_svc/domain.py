"""graph_svc business rules: accounts, sessions and the follow graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from common.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from common.ids import IdGenerator
from common.kafka import TOPIC_FOLLOWS
from common.outbox import Event, Outbox
from common.pagination import decode_token, encode_token
from graph_svc.accounts import Account, Passwords, username_key, validate_password, validate_username
from graph_svc.store import FollowEdge, GraphStore
from graph_svc.tokens import TokenSigner

BAD_LOGIN = "username or password is wrong"
# Accounts one ListFollowingIds call lists by default (CHIRP_FOLLOWING_LIST_LIMIT);
# beyond it callers ask about specific ids, at most FOLLOWING_AMONG_MAX per call.
FOLLOWING_IDS_LIMIT = 10_000
FOLLOWING_AMONG_MAX = 1000
# A real hash to verify against when the username is unknown, so both failures
# take the same time.
_DUMMY_PASSWORD = "not-a-real-password"


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
    ) -> None:
        self._following_ids_limit = following_ids_limit
        self._store = store
        self._outbox = outbox
        self._passwords = passwords
        self._signer = signer
        self._ids = ids
        self._clock = clock
        self._dummy_hash: str | None = None

    # ---- accounts -------------------------------------------------------------

    async def sign_up(self, username: str, password: str) -> Account:
        validate_username(username)
        validate_password(password)
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

    async def sign_in(self, username: str, password: str) -> Session:
        if not username or not password or len(password) > 1024:
            raise Unauthenticated(BAD_LOGIN)
        user_id = await self._store.user_id_by_name(username_key(username))
        account = await self._store.get_user(user_id) if user_id is not None else None
        if account is None:
            await self._passwords.verify(await self._dummy(), password)
            raise Unauthenticated(BAD_LOGIN)
        if not await self._passwords.verify(account.password_hash, password):
            raise Unauthenticated(BAD_LOGIN)
        token, expires_at = self._signer.issue(account.user_id, self._clock())
        return Session(token, expires_at, account)

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

    # ---- follows --------------------------------------------------------------

    async def follow(self, follower: int, followee: int) -> None:
        _check_id(followee)
        if follower == followee:
            raise InvalidArgument("you cannot follow yourself", field="user_id")
        await self.get_user(followee)
        created, at = await self._store.add_edge(follower, followee, _ms_precision(self._clock()))
        event = self._event("follow", follower, followee, at)
        # Written again on a repeated follow too: that repairs lists a crash cut short.
        await self._store.write_follow_lists(follower, followee, at, event)
        if created:
            await self._store.count_follow(follower, followee, +1)
        self._outbox.publish_soon(event)

    async def unfollow(self, follower: int, followee: int) -> None:
        _check_id(followee)
        if follower == followee:
            raise InvalidArgument("you cannot unfollow yourself", field="user_id")
        await self.get_user(followee)
        at = await self._store.edge_time(follower, followee)
        if at is None:
            return
        if not await self._store.remove_edge(follower, followee):
            return  # a concurrent unfollow won
        event = self._event("unfollow", follower, followee, at)
        await self._store.delete_follow_lists(follower, followee, at, event)
        await self._store.count_follow(follower, followee, -1)
        self._outbox.publish_soon(event)

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
        after = _cursor(page_token, "followers")
        edges = await self._store.followers(user_id, page_size + 1, after)
        return await self._page(edges, page_size, "followers")

    async def following(self, user_id: int, page_size: int, page_token: str) -> Page:
        await self.get_user(user_id)
        after = _cursor(page_token, "following")
        edges = await self._store.following(user_id, page_size + 1, after)
        return await self._page(edges, page_size, "following")

    async def follower_ids(self, user_id: int, page_size: int, page_token: str) -> tuple[list[int], str]:
        _check_id(user_id)
        edges = await self._store.followers(user_id, page_size + 1, _cursor(page_token, "follower_ids"))
        return [e.user_id for e in edges[:page_size]], _next_token(edges, page_size, "follower_ids")

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

    async def _page(self, edges: list[FollowEdge], page_size: int, kind: str) -> Page:
        accounts = await self._store.get_users([e.user_id for e in edges[:page_size]])
        return Page(accounts, _next_token(edges, page_size, kind))


def _check_id(user_id: int) -> None:
    if user_id <= 0:
        raise InvalidArgument("user_id must be a positive integer", field="user_id")


def _cursor(token: str, kind: str) -> FollowEdge | None:
    cursor = decode_token(token, kind)
    if cursor is None:
        return None
    try:
        return FollowEdge(int(cursor["id"]), int(cursor["t"]))
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument("page_token is not valid", field="page_token") from None


def _next_token(edges: list[FollowEdge], page_size: int, kind: str) -> str:
    if len(edges) <= page_size:
        return ""
    last = edges[page_size - 1]
    return encode_token({"k": kind, "id": last.user_id, "t": last.followed_at_ms})
