"""The edge as a production front door: limits and compression. Which calls it
retries and how it ejects instances is config alone: tests/unit/test_edge_config.py.

Limits are exercised on a private Envoy rendered by the same template with
tiny limits, so the shared edge's limits never disturb other tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.conftest import unique_name
from tests.e2e.test_users import assert_error
from tests.edge import private_edge, render

LIMITED = replace(
    render.EdgeSettings(), listen_port=18080, admin_port=19901, login_rps=1, post_rps=2, max_request_bytes=2048
)


@pytest.fixture(scope="module")
def limited_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_edge(tmp_path_factory.mktemp("edge"), LIMITED) as base:
        yield base


def test_login_is_rate_limited_with_429_and_json_body(limited_edge: str, edge: httpx.Client) -> None:
    name = unique_name()
    edge.post("/v1/users", json={"username": name, "password": "correct horse"}).raise_for_status()

    def login(_: int) -> httpx.Response:
        return httpx.post(
            f"{limited_edge}/v1/sessions", json={"username": name, "password": "correct horse"}, timeout=10
        )

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(login, range(8)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(200) >= 1
    assert statuses.count(429) >= 4, statuses  # bucket of 2 with 1/s refill
    limited = next(r for r in replies if r.status_code == 429)
    body = assert_error(limited, 429, 8)
    assert "rate limit" in str(body["message"])
    assert limited.headers["retry-after"] == "1"
    # Reads on the same edge are not throttled by the login bucket.
    assert httpx.get(f"{limited_edge}/v1/feed/trending", timeout=10).status_code == 200


def test_both_routes_of_a_post_take_from_one_bucket(limited_edge: str, edge: httpx.Client) -> None:
    """CreateTweet has a route for calls with an Idempotency-Key and one for calls
    without: alternating them must not double the edge's post limit."""
    name = unique_name()
    edge.post("/v1/users", json={"username": name, "password": "correct horse"}).raise_for_status()
    token = edge.post("/v1/sessions", json={"username": name, "password": "correct horse"}).json()["access_token"]
    replies = []
    with httpx.Client(base_url=limited_edge, timeout=10) as raw:
        started = time.monotonic()
        for i in range(16):
            headers = {"authorization": f"Bearer {token}"}
            if i % 2:
                headers[render.IDEMPOTENCY_HEADER] = f"bucket-{name}-{i}"
            replies.append(raw.post("/v1/tweets", json={"text": f"post {i}"}, headers=headers))
        elapsed = time.monotonic() - started
    # The edge's refusals (tweet_svc's per-user limit says "too many posts").
    refused = [r for r in replies if r.status_code == 429 and "rate limit exceeded" in r.json()["message"]]
    # One bucket of 4 (twice post_rps) and 2 more at each 1 s fill, of which `elapsed`
    # spans at most int(elapsed) + 1; two buckets let through 8 before the first fill.
    most = 2 * LIMITED.post_rps + LIMITED.post_rps * (int(elapsed) + 1)
    assert len(replies) - len(refused) <= most, (elapsed, [r.status_code for r in replies])
    assert refused, [r.status_code for r in replies]
    assert_error(refused[0], 429, 8)
    assert refused[0].headers["retry-after"] == "1"
    # Other calls on the same edge take from the default bucket, not the post one.
    assert httpx.get(f"{limited_edge}/v1/feed/trending", timeout=10).status_code == 200


def test_oversized_body_is_413_with_json_body(limited_edge: str) -> None:
    big = {"username": "x" * 5000, "password": "correct horse"}
    assert_error(httpx.post(f"{limited_edge}/v1/users", json=big, timeout=10), 413, 3)


def test_json_responses_are_gzipped_when_asked(edge: httpx.Client, limited_edge: str) -> None:
    author = unique_name()
    created = edge.post("/v1/users", json={"username": author, "password": "correct horse"}).json()["user"]
    token = edge.post("/v1/sessions", json={"username": author, "password": "correct horse"}).json()["access_token"]
    for i in range(12):
        edge.post("/v1/tweets", json={"text": f"a tweet long enough to be worth compressing, number {i}"},
                  headers={"authorization": f"Bearer {token}"}).raise_for_status()  # fmt: skip
    url = f"{limited_edge}/v1/users/{created['user_id']}/tweets"
    with httpx.Client() as raw:
        reply = raw.get(url, headers={"accept-encoding": "gzip"})
        plain = raw.get(url, headers={"accept-encoding": "identity"})
    assert reply.headers.get("content-encoding") == "gzip"
    assert "content-encoding" not in plain.headers
    assert reply.json() == plain.json()  # httpx decodes gzip transparently
    assert len(plain.json()["tweets"]) == 12
    # Fewer bytes crossed the wire than the body holds: it really was compressed.
    assert reply.num_bytes_downloaded < len(reply.content) == len(plain.content)


def test_private_edge_serves_the_same_api(limited_edge: str, tmp_path: Path) -> None:
    reply = httpx.get(f"{limited_edge}/v1/users/1", timeout=10)
    assert_error(reply, 404, 5)
