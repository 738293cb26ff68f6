"""Sessions through Envoy, as a client app uses them: login returns an access and a
refresh token, refresh rotates them, a reused refresh token ends the session,
logout and a password change end sessions (graph_svc/sessions.py)."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.jwk import key_id
from infra import keys
from tests.conftest import ROOT, unique_name
from tests.e2e.test_users import assert_error

PASSWORD = "correct horse"
NEW_PASSWORD = "battery staple"
BAD_REFRESH = "the refresh token is invalid, expired or revoked; log in again"


def sign_up(edge: httpx.Client) -> str:
    name = unique_name("ses")
    reply = edge.post("/v1/users", json={"username": name, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return name


def log_in(edge: httpx.Client, name: str, password: str = PASSWORD) -> dict[str, Any]:
    reply = edge.post("/v1/sessions", json={"username": name, "password": password})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def refresh(edge: httpx.Client, refresh_token: str, **headers: str) -> httpx.Response:
    return edge.post("/v1/sessions:refresh", json={"refresh_token": refresh_token}, headers=headers)


def bearer(session: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {session['access_token']}", **extra}


def claims(access_token: str) -> dict[str, Any]:
    """The token's payload, unverified: the edge verifies it; here we only read it."""
    payload = access_token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def assert_refused(reply: httpx.Response) -> None:
    body = assert_error(reply, 401, 16)
    assert body["message"] == BAD_REFRESH


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_login_returns_a_short_access_token_of_its_session_and_a_refresh_token(edge: httpx.Client) -> None:
    name = sign_up(edge)
    before = datetime.now(UTC)
    session = log_in(edge, name)
    assert session["token_type"] == "Bearer"
    assert session["user"]["username"] == name
    assert len(session["refresh_token"]) == 43
    # Defaults: 15 minutes and 30 days (a second of slack each way for the whole seconds).
    assert before + timedelta(seconds=899) <= when(session["expires_at"]) <= before + timedelta(seconds=960)
    refresh_expires = when(session["refresh_expires_at"])
    assert before + timedelta(days=30, seconds=-1) <= refresh_expires <= before + timedelta(days=30, seconds=60)
    token = claims(session["access_token"])
    assert token["sub"] == session["user"]["user_id"]
    assert int(token["sid"]) > 0
    assert log_in(edge, name)["refresh_token"] != session["refresh_token"]
    assert int(claims(log_in(edge, name)["access_token"])["sid"]) != int(token["sid"])  # a login per session


def test_refresh_gives_a_working_pair_in_the_same_session(edge: httpx.Client) -> None:
    session = log_in(edge, sign_up(edge))
    # A client usually still sends its old (maybe expired) access token: refresh ignores it.
    reply = refresh(edge, session["refresh_token"], authorization="Bearer expired.or.garbage")
    assert reply.status_code == 200, reply.text
    pair = reply.json()
    assert set(pair) >= {"access_token", "token_type", "expires_at", "user", "refresh_token", "refresh_expires_at"}
    assert pair["user"]["user_id"] == session["user"]["user_id"]
    assert pair["refresh_token"] != session["refresh_token"]
    assert claims(pair["access_token"])["sid"] == claims(session["access_token"])["sid"]
    feed = edge.get("/v1/feed", headers=bearer(pair))
    assert feed.status_code == 200, feed.text
    again = refresh(edge, pair["refresh_token"])  # the new refresh token works in turn
    assert again.status_code == 200, again.text


def test_reusing_a_retired_refresh_token_ends_the_whole_session(edge: httpx.Client) -> None:
    name = sign_up(edge)
    session, elsewhere = log_in(edge, name), log_in(edge, name)
    rotated = refresh(edge, session["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    assert_refused(refresh(edge, session["refresh_token"]))  # replayed
    assert_refused(refresh(edge, rotated.json()["refresh_token"]))  # and so the new one is out too
    assert refresh(edge, elsewhere["refresh_token"]).status_code == 200  # another login is untouched


def test_logout_ends_the_session_of_the_calling_token_only(edge: httpx.Client) -> None:
    name = sign_up(edge)
    session, other = log_in(edge, name), log_in(edge, name)
    assert_error(edge.delete("/v1/sessions/current"), 401, 16)  # needs an access token
    reply = edge.delete("/v1/sessions/current", headers=bearer(session))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}
    assert_refused(refresh(edge, session["refresh_token"]))
    assert refresh(edge, other["refresh_token"]).status_code == 200
    again = edge.delete("/v1/sessions/current", headers=bearer(session))  # logging out twice is fine
    assert again.status_code == 200, again.text


def test_a_client_sent_session_id_is_dropped_at_the_edge(edge: httpx.Client) -> None:
    """A token without a `sid` (as issued before sessions had ids) ends no session, even with
    a session id header: only the edge sets that header, from the verified token."""
    name = sign_up(edge)
    session = log_in(edge, name)
    without_sid = {k: v for k, v in claims(session["access_token"]).items() if k != "sid"}
    private_key, _ = keys.ensure_keys(ROOT / ".state" / "keys")
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    kid = key_id(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    old_token = jwt.encode(without_sid, key, algorithm="EdDSA", headers={"kid": kid})
    forged = {"authorization": f"Bearer {old_token}", "x-chirp-session-id": str(claims(session["access_token"])["sid"])}
    reply = edge.delete("/v1/sessions/current", headers=forged)
    assert reply.status_code == 200, reply.text
    assert refresh(edge, session["refresh_token"]).status_code == 200


def test_changing_the_password_ends_every_session(edge: httpx.Client) -> None:
    name = sign_up(edge)
    session, other = log_in(edge, name), log_in(edge, name)
    change = "/v1/me/password"
    assert_error(edge.post(change, json={"old_password": PASSWORD, "new_password": NEW_PASSWORD}), 401, 16)
    wrong = edge.post(
        change, json={"old_password": "wrong horse", "new_password": NEW_PASSWORD}, headers=bearer(session)
    )
    assert assert_error(wrong, 401, 16)["message"] == "wrong password"
    short = edge.post(change, json={"old_password": PASSWORD, "new_password": "short"}, headers=bearer(session))
    assert_error(short, 400, 3)
    assert refresh(edge, other["refresh_token"]).status_code == 200  # refused changes end nothing
    other = log_in(edge, name)

    reply = edge.post(change, json={"old_password": PASSWORD, "new_password": NEW_PASSWORD}, headers=bearer(session))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}
    assert_refused(refresh(edge, session["refresh_token"]))
    assert_refused(refresh(edge, other["refresh_token"]))
    old = edge.post("/v1/sessions", json={"username": name, "password": PASSWORD})
    assert_error(old, 401, 16)
    fresh = log_in(edge, name, NEW_PASSWORD)
    assert refresh(edge, fresh["refresh_token"]).status_code == 200


def test_unknown_and_malformed_refresh_tokens(edge: httpx.Client) -> None:
    unknown = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    assert_refused(refresh(edge, unknown))
    # Not something login or refresh could have returned: invalid input, like any other field.
    for malformed in ("", "not-a-token", unknown + "A", unknown[:-1] + "+"):
        body = assert_error(refresh(edge, malformed), 400, 3)
        assert "refresh_token" in str(body["message"])
    assert_error(edge.post("/v1/sessions:refresh", json={}), 400, 3)
