"""Sessions (graph_svc/sessions.py) with the in-memory store: refresh-token rotation,
reuse detection, logout, password changes, and the edge config that carries the
session id."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import InvalidArgument, Unauthenticated
from common.identity import SESSION_ID_HEADER, USER_ID_HEADER, calling_session
from common.ids import IdGenerator
from graph_svc import config as graph_config
from graph_svc.accounts import Account, Passwords
from graph_svc.domain import WRONG_PASSWORD, Graph
from graph_svc.sessions import (
    BAD_REFRESH,
    PASSWORD_CHANGED,
    MemorySessionStore,
    RefreshRecord,
    Sessions,
    token_hash,
)
from graph_svc.tokens import AUDIENCE, TokenSigner
from tests.edge import render

USER = 7
START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TTL = timedelta(days=30)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def keypair() -> tuple[TokenSigner, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return TokenSigner(pem, timedelta(minutes=15)), key


def claims(token: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    return jwt.decode(token, key.public_key(), algorithms=["EdDSA"], audience=AUDIENCE, options={"verify_exp": False})


def sessions(store: MemorySessionStore | None = None, clock: Clock | None = None) -> Sessions:
    signer, _ = keypair()
    return Sessions(store or MemorySessionStore(), signer, IdGenerator(1), TTL, clock=clock or Clock())


# ---- tokens --------------------------------------------------------------------------


async def test_a_login_gives_an_access_token_of_its_session_and_a_hashed_refresh_token() -> None:
    signer, key = keypair()
    store = MemorySessionStore()
    tokens = await Sessions(store, signer, IdGenerator(1), TTL, clock=Clock()).start(USER, "hash")
    seen = claims(tokens.access_token, key)
    assert (seen["sub"], seen["sid"], seen["iss"]) == (str(USER), str(tokens.session_id), "chirp")
    assert tokens.expires_at == START + timedelta(minutes=15)
    assert tokens.refresh_expires_at == START + TTL
    assert len(base64.urlsafe_b64decode(tokens.refresh_token + "=")) == 32
    # Only the hash is stored: the token itself appears nowhere in the store.
    assert list(store.tokens) == [hashlib.sha256(tokens.refresh_token.encode()).digest()]
    assert tokens.refresh_token not in repr(store.tokens)
    assert store.chains[(USER, tokens.session_id)].revoked is False


async def test_refresh_rotates_within_the_session_and_retires_the_old_token() -> None:
    clock = Clock()
    s = sessions(clock=clock)
    first = await s.start(USER, "hash")
    clock.now = START + timedelta(minutes=14)
    user, second = await s.refresh(first.refresh_token)
    assert user == USER
    assert second.session_id == first.session_id
    assert second.refresh_token != first.refresh_token
    assert second.expires_at == START + timedelta(minutes=29)
    assert second.refresh_expires_at == START + timedelta(minutes=14) + TTL  # a session lasts while in use
    _, third = await s.refresh(second.refresh_token)  # the new one works
    assert third.session_id == first.session_id


async def test_reusing_a_retired_token_ends_the_session_for_every_token_in_it() -> None:
    store = MemorySessionStore()
    s = sessions(store)
    first = await s.start(USER, "hash")
    other = await s.start(USER, "hash")  # another device
    _, second = await s.refresh(first.refresh_token)
    with pytest.raises(Unauthenticated) as reused:
        await s.refresh(first.refresh_token)
    assert reused.value.message == BAD_REFRESH
    with pytest.raises(Unauthenticated):
        await s.refresh(second.refresh_token)  # the thief's or the owner's: both are out
    assert store.chains[(USER, first.session_id)].revoked
    await s.refresh(other.refresh_token)  # other sessions are untouched


class RacingStore(MemorySessionStore):
    """Both refreshes read the token before either retires it."""

    def __init__(self) -> None:
        super().__init__()
        self.readers = 0
        self.both_read = asyncio.Event()

    async def refresh_token(self, token_hash: bytes) -> RefreshRecord | None:
        record = await super().refresh_token(token_hash)
        self.readers += 1
        if self.readers == 2:
            self.both_read.set()
        await asyncio.wait_for(self.both_read.wait(), 5)
        return record


async def test_of_two_racing_refreshes_only_one_gets_a_pair() -> None:
    store = RacingStore()
    s = sessions(store)
    first = await s.start(USER, "hash")
    results = await asyncio.gather(
        s.refresh(first.refresh_token), s.refresh(first.refresh_token), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, tuple)]
    lost = [r for r in results if isinstance(r, Unauthenticated)]
    assert len(won) == 1 and len(lost) == 1
    # Both read the token as live; the conditional retire let one through, and the
    # loser's attempt counts as reuse.
    assert store.chains[(USER, first.session_id)].revoked


async def test_unknown_expired_and_revoked_tokens_get_the_same_answer() -> None:
    clock = Clock()
    s = sessions(clock=clock)
    unknown = base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode()
    answers = []
    with pytest.raises(Unauthenticated) as error:
        await s.refresh(unknown)
    answers.append(error.value.message)
    expiring = await s.start(USER, "hash")
    clock.now = START + TTL
    with pytest.raises(Unauthenticated) as error:
        await s.refresh(expiring.refresh_token)
    answers.append(error.value.message)
    clock.now = START
    revoked = await s.start(USER, "hash")
    await s.end(USER, revoked.session_id)
    with pytest.raises(Unauthenticated) as error:
        await s.refresh(revoked.refresh_token)
    answers.append(error.value.message)
    assert answers == [BAD_REFRESH] * 3
    clock.now = START + TTL - timedelta(seconds=1)
    await s.refresh(expiring.refresh_token)  # still live a second before


@pytest.mark.parametrize(
    "malformed",
    ["", "short", "A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + "+", "A" * 42 + "/", "é" * 43, " " + "A" * 42],
)
async def test_a_malformed_refresh_token_is_invalid_input(malformed: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        await sessions().refresh(malformed)
    assert error.value.metadata["field"] == "refresh_token"


async def test_logout_ends_one_session_and_ending_twice_is_fine() -> None:
    s = sessions()
    mine, other = await s.start(USER, "hash"), await s.start(USER, "hash")
    await s.end(USER, mine.session_id)
    await s.end(USER, mine.session_id)
    with pytest.raises(Unauthenticated):
        await s.refresh(mine.refresh_token)
    await s.refresh(other.refresh_token)


async def test_logout_only_ends_a_session_of_the_caller() -> None:
    store = MemorySessionStore()
    s = sessions(store)
    theirs = await s.start(USER + 1, "hash")
    await s.end(USER, theirs.session_id)  # a sid of someone else's session, under my user id
    await s.refresh(theirs.refresh_token)


async def test_a_new_password_ends_every_session_of_the_user_only() -> None:
    store = MemorySessionStore()
    s = sessions(store)
    mine = [await s.start(USER, "old") for _ in range(3)]
    theirs = await s.start(USER + 1, "hash")
    await s.replace_password(USER, "new")
    assert store.passwords[USER] == "new"
    for tokens in mine:
        with pytest.raises(Unauthenticated):
            await s.refresh(tokens.refresh_token)
    await s.refresh(theirs.refresh_token)
    await s.start(USER, "new")  # a login with the new password starts a live session


async def test_a_login_that_checked_a_password_changed_meanwhile_gives_up() -> None:
    store = MemorySessionStore()
    store.passwords[USER] = "new"
    s = sessions(store)
    with pytest.raises(Unauthenticated) as error:
        await s.start(USER, "old")
    assert error.value.message == PASSWORD_CHANGED
    [(_, chain_id)] = store.chains
    assert store.chains[(USER, chain_id)].revoked


def test_refresh_ttl_must_fit_a_cassandra_ttl() -> None:
    signer, _ = keypair()
    with pytest.raises(ValueError):
        Sessions(MemorySessionStore(), signer, IdGenerator(1), timedelta(days=36500))


def test_the_token_hash_is_of_the_text_as_sent() -> None:
    token = base64.urlsafe_b64encode(b"\xff" * 32).rstrip(b"=").decode()
    # The same bytes spelt differently in the last character's unused bits is another token.
    other = token[:-1] + chr(ord(token[-1]) + 1)
    assert base64.urlsafe_b64decode(token + "=") == base64.urlsafe_b64decode(other + "=")
    assert token_hash(token) != token_hash(other)


# ---- the domain: login, refresh, logout and password change -----------------------


class AccountStore:
    def __init__(self, account: Account) -> None:
        self.account = account

    async def user_id_by_name(self, key: str) -> int | None:
        return self.account.user_id if key == self.account.username else None

    async def get_user(self, user_id: int) -> Account | None:
        return self.account if user_id == self.account.user_id else None


async def graph_with_account() -> tuple[Graph, AccountStore, MemorySessionStore, Passwords]:
    passwords = Passwords(19456, 2, 1)
    account = Account(USER, "alice", START, await passwords.hash("correct horse"))
    accounts = AccountStore(account)
    store = MemorySessionStore()
    signer, _ = keypair()
    ids = IdGenerator(1)
    unused = cast(Any, None)
    graph = Graph(
        cast(Any, accounts), unused, passwords, signer, ids, sessions=Sessions(store, signer, ids, TTL, clock=Clock())
    )
    return graph, accounts, store, passwords


async def test_sign_in_and_refresh_answer_with_both_tokens_and_the_user() -> None:
    graph, _, _, _ = await graph_with_account()
    session = await graph.sign_in("alice", "correct horse")
    assert session.refresh_token and session.access_token
    refreshed = await graph.refresh_session(session.refresh_token)
    assert refreshed.account.username == "alice"
    assert refreshed.refresh_token != session.refresh_token


async def test_change_password_checks_the_old_one_and_ends_every_session() -> None:
    graph, _, store, passwords = await graph_with_account()
    session = await graph.sign_in("alice", "correct horse")
    with pytest.raises(InvalidArgument):
        await graph.change_password(USER, "correct horse", "short")
    with pytest.raises(Unauthenticated) as wrong:
        await graph.change_password(USER, "wrong horse", "battery staple")
    assert wrong.value.message == WRONG_PASSWORD
    await graph.refresh_session(session.refresh_token)  # refused changes end nothing
    session = await graph.sign_in("alice", "correct horse")
    await graph.change_password(USER, "correct horse", "battery staple")
    assert await passwords.verify(store.passwords[USER], "battery staple")
    with pytest.raises(Unauthenticated):
        await graph.refresh_session(session.refresh_token)
    assert all(chain.revoked for chain in store.chains.values())


async def test_sign_out_without_a_session_id_is_fine() -> None:
    graph, _, store, _ = await graph_with_account()
    session = await graph.sign_in("alice", "correct horse")
    await graph.sign_out(USER, None)
    await graph.refresh_session(session.refresh_token)
    [(_, chain_id)] = store.chains
    await graph.sign_out(USER, chain_id)
    with pytest.raises(Unauthenticated):
        await graph.refresh_session(session.refresh_token)


# ---- settings, metadata and the edge ----------------------------------------------


def test_access_tokens_are_short_and_refresh_tokens_long_by_default() -> None:
    cfg = graph_config.load({})
    assert (cfg.token_ttl_seconds, cfg.refresh_ttl_seconds) == (900, 30 * 24 * 3600)
    cfg = graph_config.load({"CHIRP_TOKEN_TTL_SECONDS": "120", "CHIRP_REFRESH_TTL_SECONDS": "3600"})
    assert (cfg.token_ttl_seconds, cfg.refresh_ttl_seconds) == (120, 3600)


class Context:
    def __init__(self, *metadata: tuple[str, str]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def test_the_calling_session_comes_from_its_metadata() -> None:
    def call(*metadata: tuple[str, str]) -> int | None:
        return calling_session(cast(grpc.aio.ServicerContext, Context(*metadata)))

    assert call((USER_ID_HEADER, "7"), (SESSION_ID_HEADER, "123")) == 123
    assert call((USER_ID_HEADER, "7")) is None
    for bad in ("0", "-1", "x", str(2**63)):
        with pytest.raises(InvalidArgument):
            call((SESSION_ID_HEADER, bad))


def _find(node: Any, key: str) -> list[Any]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _find(v, key)
    elif isinstance(node, list):
        for item in node:
            found += _find(item, key)
    return found


def test_the_edge_forwards_the_sid_claim_and_drops_client_copies() -> None:
    config = render.build('{"keys": []}')
    [claim_headers] = _find(config, "claim_to_headers")
    assert {"header_name": SESSION_ID_HEADER, "claim_name": "sid"} in claim_headers
    [mutations] = _find(config, "mutations")
    assert {"remove": SESSION_ID_HEADER} in mutations
    [jwt_rules] = [c["rules"] for c in _find(config, "typed_config") if "providers" in c]
    refresh = [r for r in jwt_rules if r["match"].get("path") == "/chirp.graph.v1.GraphService/RefreshSession"]
    assert refresh == [{"match": {"path": "/chirp.graph.v1.GraphService/RefreshSession"}}]  # no token needed
    logout = [r for r in jwt_rules if r["match"].get("path") == "/chirp.graph.v1.GraphService/DeleteSession"]
    assert logout == []  # falls through to the catch-all that requires a token
