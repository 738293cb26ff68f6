"""Sign-up and user look-up through Envoy, as an external app calls them."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from tests.conftest import unique_name


def assert_error(reply: httpx.Response, status: int, code: int) -> dict[str, object]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], list)
    return dict(body)


def test_sign_up_then_get_returns_the_user(edge: httpx.Client) -> None:
    name = unique_name()
    created = edge.post("/v1/users", json={"username": name, "password": "correct horse"})
    assert created.status_code == 200, created.text
    user = created.json()["user"]
    assert isinstance(user["user_id"], str) and int(user["user_id"]) > 0
    assert user["username"] == name
    assert user["follower_count"] == 0 and user["following_count"] == 0
    datetime.fromisoformat(user["created_at"].replace("Z", "+00:00"))
    assert "password" not in created.text and "argon2" not in created.text

    fetched = edge.get(f"/v1/users/{user['user_id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["user"] == user


def test_username_taken_ignoring_case_is_409(edge: httpx.Client) -> None:
    name = unique_name("Ab")
    assert edge.post("/v1/users", json={"username": name, "password": "correct horse"}).status_code == 200
    again = edge.post("/v1/users", json={"username": name.swapcase(), "password": "another one"})
    body = assert_error(again, 409, 6)
    assert "taken" in str(body["message"])


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "", "password": "correct horse"},
        {"username": "x" * 16, "password": "correct horse"},
        {"username": "bad name", "password": "correct horse"},
        {"username": "ok_name", "password": "short"},
        {"username": "ok_name", "password": "x" * 129},
        {"password": "correct horse"},
    ],
)
def test_bad_username_or_password_is_400(edge: httpx.Client, payload: dict[str, str]) -> None:
    assert_error(edge.post("/v1/users", json=payload), 400, 3)


def test_malformed_json_is_400_with_json_body(edge: httpx.Client) -> None:
    reply = edge.post("/v1/users", content=b'{"username": "x",', headers={"content-type": "application/json"})
    assert_error(reply, 400, 3)


def test_unknown_user_is_404(edge: httpx.Client) -> None:
    body = assert_error(edge.get("/v1/users/12345"), 404, 5)
    assert "12345" in str(body["message"])


def test_malformed_user_id_is_400(edge: httpx.Client) -> None:
    assert_error(edge.get("/v1/users/not-a-number"), 400, 3)


def test_password_is_stored_as_argon2id_hash(edge: httpx.Client) -> None:
    import asyncio

    from common.cql import CqlSession

    name = unique_name()
    user = edge.post("/v1/users", json={"username": name, "password": "correct horse"}).json()["user"]

    async def stored_hash() -> str:
        session = await CqlSession.connect(["127.0.0.1"], 9042, "chirp", 5.0)
        try:
            rows = await session.execute("SELECT password_hash FROM users WHERE user_id = %s", (int(user["user_id"]),))
        finally:
            session.close()
        return str(rows[0].password_hash)

    stored = asyncio.run(stored_hash())
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
