"""How idle processes wait: the health probes' pace, the Kafka workers' polls,
the relay's backoff, Prometheus' scrape interval, the metrics server's wakes,
and the idle-CPU tool's sums."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from confluent_kafka import KafkaError, KafkaException
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from bench import idle
from common import kafka
from common.cql import PING_FRESH_SECONDS
from common.metrics import GRPC_HANDLED, METRICS_POLL_SECONDS, metrics_server
from common.outbox import IdleBackoff
from common.server import (
    FAILED_PROBES_BEFORE_NOT_SERVING,
    HEALTH_INTERVAL_SECONDS,
    HEALTH_RECHECK_SECONDS,
    LIVENESS_SERVICE,
    ProbeRecord,
    Wiring,
    watch_health,
)
from common.worker import ConsumerLoop
from infra import prometheus

ROOT = Path(__file__).resolve().parents[2]


# ---- health probes ------------------------------------------------------------


def test_passing_probes_are_slow_and_a_failure_is_checked_again_quickly() -> None:
    record = ProbeRecord()
    assert record.record(True) == (True, HEALTH_INTERVAL_SECONDS)
    assert HEALTH_RECHECK_SECONDS < HEALTH_INTERVAL_SECONDS
    # Serving through the first failures, rechecked at the quick pace...
    for _ in range(FAILED_PROBES_BEFORE_NOT_SERVING - 1):
        assert record.record(False) == (True, HEALTH_RECHECK_SECONDS)
    # ...out after FAILED_PROBES_BEFORE_NOT_SERVING in a row, still rechecked quickly...
    assert record.record(False) == (False, HEALTH_RECHECK_SECONDS)
    assert record.record(False) == (False, HEALTH_RECHECK_SECONDS)
    # ...and back, at the slow pace, on the first probe that passes.
    assert record.record(True) == (True, HEALTH_INTERVAL_SECONDS)


def test_the_probe_after_a_passing_one_asks_the_store_itself() -> None:
    # A probe passes on any CQL statement answered in the last PING_FRESH_SECONDS. Were
    # that as long as the probe interval, the next probe too could pass on a statement
    # answered before an outage, and NOT_SERVING would come a whole interval later.
    assert PING_FRESH_SECONDS < HEALTH_INTERVAL_SECONDS


def test_a_process_whose_first_probe_fails_does_not_serve_until_one_passes() -> None:
    record = ProbeRecord()
    assert record.record(False) == (False, HEALTH_RECHECK_SECONDS)
    assert record.record(True) == (True, HEALTH_INTERVAL_SECONDS)


def test_one_failure_between_passes_never_takes_an_instance_out() -> None:
    record = ProbeRecord()
    record.record(True)
    for _ in range(10):
        assert record.record(False)[0] is True
        assert record.record(True)[0] is True


# ---- relay backoff --------------------------------------------------------------


def test_relay_passes_back_off_while_idle_and_speed_up_on_work() -> None:
    backoff = IdleBackoff(busy=2.0, idle=5.0)
    assert [backoff.after(False) for _ in range(4)] == [2.0, 4.0, 5.0, 5.0]
    assert backoff.after(True) == 2.0
    assert backoff.after(False) == 4.0


def test_relay_backoff_never_goes_below_the_busy_pace() -> None:
    backoff = IdleBackoff(busy=2.0, idle=1.0)
    assert [backoff.after(False) for _ in range(3)] == [2.0, 2.0, 2.0]


# ---- Kafka worker polls ---------------------------------------------------------


class ScriptedConsumer:
    """poll_batch hands out the scripted batches in turn and records each call's (max_messages, wait)."""

    def __init__(self, batches: Sequence[list[str]]) -> None:
        self.batches = list(batches)
        self.calls: list[tuple[int, float]] = []
        self.committed: list[list[str]] = []

    async def poll_batch(self, max_messages: int, wait_seconds: float) -> list[str]:
        self.calls.append((max_messages, wait_seconds))
        return self.batches.pop(0) if self.batches else []

    async def commit(self, messages: Sequence[Any]) -> None:
        self.committed.append(list(messages))


async def test_an_idle_worker_waits_long_for_one_message_then_gathers_a_batch() -> None:
    consumer = ScriptedConsumer([["a", "b"], [], [], ["c"], ["d", "e"], ["f"]])
    applied: list[list[str]] = []

    async def apply(messages: Sequence[Any]) -> None:
        applied.append(list(messages))

    loop = ConsumerLoop("g", lambda: consumer, apply, 100, 0.05, idle_wait_seconds=1.0)  # type: ignore[arg-type,return-value]
    for _ in range(5):
        await loop.run_once()
    assert consumer.calls == [
        (100, 0.05),  # busy: a whole batch
        (100, 0.05),  # empty: from now on idle
        (1, 1.0),  # idle: one long wait for the first message, which nothing answers
        (1, 1.0),  # the first message comes...
        (99, 0.05),  # ...and the rest of its batch is gathered as before
        (100, 0.05),  # busy again
    ]
    assert applied == [["a", "b"], ["c", "d", "e"], ["f"]]
    assert consumer.committed == applied


async def test_a_worker_of_batches_of_one_applies_the_first_message_alone() -> None:
    consumer = ScriptedConsumer([[], ["a"], ["b"]])

    async def apply(messages: Sequence[Any]) -> None:
        pass

    loop = ConsumerLoop("g", lambda: consumer, apply, 1, 0.2, idle_wait_seconds=2.0)  # type: ignore[arg-type,return-value]
    for _ in range(3):
        await loop.run_once()
    assert consumer.calls == [(1, 0.2), (1, 2.0), (1, 0.2)]


class Msg:
    """Just what the loop reads of a Kafka message."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def __repr__(self) -> str:
        return f"{self._partition}@{self._offset}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


async def test_a_busy_loop_commits_at_most_once_an_interval_and_whenever_a_poll_comes_back_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = [Msg(0, 1), Msg(1, 1), Msg(0, 2), Msg(0, 3), Msg(1, 2)]
    consumer = ScriptedConsumer([[m[0], m[1]], [m[2]], [m[3]], [], [m[4]]])  # type: ignore[list-item]
    clock = Clock()
    monkeypatch.setattr(asyncio.get_running_loop(), "time", clock.time)

    async def apply(messages: Sequence[Any]) -> None:
        clock.now += 0.3

    loop = ConsumerLoop("g", lambda: consumer, apply, 100, 0.05, commit_interval_seconds=1.0)  # type: ignore[arg-type,return-value]
    await loop.run_once()  # the first commit is due at once
    assert consumer.committed == [[m[0], m[1]]]
    await loop.run_once()  # 0.3 s later: kept
    await loop.run_once()  # 0.6 s: kept
    assert len(consumer.committed) == 1
    await loop.run_once()  # nothing came: what was applied is committed, the newest of each partition
    assert consumer.committed[1] == [m[3]]
    await loop.run_once()
    assert len(consumer.committed) == 2  # 0.3 s after the last commit


async def test_without_an_interval_every_batch_is_committed_and_close_commits_what_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = [Msg(0, 1), Msg(0, 2)]
    consumer = ScriptedConsumer([[m[0]], [m[1]]])  # type: ignore[list-item]
    every = ConsumerLoop("g", lambda: consumer, _nothing, 100, 0.05)  # type: ignore[arg-type,return-value]
    await every.run_once()
    await every.run_once()
    assert consumer.committed == [[m[0]], [m[1]]]

    later = ScriptedConsumer([[m[0]], [m[1]]])  # type: ignore[list-item]
    closed: list[str] = []
    later.commit_now = lambda messages: later.committed.append(list(messages))  # type: ignore[attr-defined]
    later.close = lambda: closed.append("closed")  # type: ignore[attr-defined]
    loop = ConsumerLoop("g", lambda: later, _nothing, 100, 0.05, commit_interval_seconds=60.0)  # type: ignore[arg-type,return-value]
    await loop.run_once()
    await loop.run_once()
    assert later.committed == [[m[0]]]
    loop.close()
    assert later.committed == [[m[0]], [m[1]]] and closed == ["closed"]


async def _nothing(messages: Sequence[Any]) -> None:
    pass


class FakeProducer:
    """What AsyncProducer uses of confluent-kafka's Producer: produce() queues a
    record, poll() serves its delivery report at once, len() counts what is queued.
    As confluent-kafka does, poll() raises a fatal error (KafkaException) instead of
    passing it to error_cb, and produce() raises `refuse` when it is set."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.queued: list[Any] = []
        self.polls: list[float] = []
        self.lock = threading.Lock()
        self.error_cb = config["error_cb"]
        self.errors: list[KafkaError] = []  # client events not yet served
        self.reachable = True
        self.refuse: KafkaException | None = None

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        if self.refuse is not None:
            raise self.refuse
        with self.lock:
            self.queued.append(on_delivery)

    def poll(self, timeout: float) -> int:
        with self.lock:
            self.polls.append(timeout)
            served, self.queued = self.queued, []
            errors, self.errors = self.errors, []
        for err in errors:
            if err.fatal():
                raise KafkaException(err)
            self.error_cb(err)
        for on_delivery in served:
            on_delivery(None, None)
        return len(served)

    def __len__(self) -> int:
        with self.lock:
            return len(self.queued) + len(self.errors)

    def list_topics(self, timeout: float) -> None:
        if not self.reachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "down"))

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def _fake_producer(
    monkeypatch: pytest.MonkeyPatch, idle_check_seconds: float
) -> tuple[kafka.AsyncProducer, FakeProducer]:
    monkeypatch.setattr(kafka, "Producer", FakeProducer)
    monkeypatch.setattr(kafka, "IDLE_CHECK_SECONDS", idle_check_seconds)
    producer = kafka.AsyncProducer("127.0.0.1:1", "test", on_fatal=None)
    return producer, producer._producer  # type: ignore[return-value]


def test_an_idle_producers_poll_thread_sleeps_and_wakes_on_a_produce(monkeypatch: pytest.MonkeyPatch) -> None:
    # confluent-kafka's poll() waits in 200 ms slices, so a thread left polling an
    # idle producer wakes five times a second: it must sleep on an event instead.
    producer, fake = _fake_producer(monkeypatch, 30.0)
    time.sleep(0.3)
    assert fake.polls == []  # nothing queued: it sleeps without polling
    settled = threading.Event()
    producer.send_nowait("t", b"k", b"v", lambda err: settled.set())
    # Served at once, not after IDLE_CHECK_SECONDS.
    assert settled.wait(2.0)
    time.sleep(0.3)
    assert len(fake.polls) <= 4  # and asleep again
    started = time.monotonic()
    producer.close()
    assert time.monotonic() - started < 2.0 and not producer._poller.is_alive()


async def test_an_awaited_send_is_settled_by_the_poll_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    producer, _ = _fake_producer(monkeypatch, 30.0)
    try:
        for _ in range(3):
            await asyncio.wait_for(producer.send("t", b"k", b"v"), 2.0)
    finally:
        producer.close()


async def test_a_send_after_an_outage_seen_while_idle_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # ALL_BROKERS_DOWN was queued while the poll thread slept: the send serves it
    # first, asks the brokers, and fails at once instead of waiting out its timeout.
    producer, fake = _fake_producer(monkeypatch, 30.0)
    try:
        time.sleep(0.1)
        fake.reachable = False
        with fake.lock:
            fake.errors.append(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all brokers are down"))
        with pytest.raises(KafkaException):
            await asyncio.wait_for(producer.send("t", b"k", b"v"), 2.0)
        assert fake.queued == []  # refused before it was produced
    finally:
        producer.close()


def test_an_idle_producer_still_serves_client_events_at_the_idle_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # ALL_BROKERS_DOWN arrives as an event on the producer's queue: served at the
    # next idle check even when nothing is sent.
    producer, fake = _fake_producer(monkeypatch, 0.05)
    time.sleep(0.4)
    producer.close()
    assert fake.polls.count(0) >= 3


# ---- Prometheus -------------------------------------------------------------------


def test_scrape_interval_defaults_to_15_s_and_is_configurable() -> None:
    assert prometheus.scrape_interval_seconds({}) == 15
    assert prometheus.scrape_interval_seconds({prometheus.SCRAPE_INTERVAL_ENV: " 30 "}) == 30
    for bad in ("0", "-5", "1.5", "soon"):
        with pytest.raises(ValueError, match=prometheus.SCRAPE_INTERVAL_ENV):
            prometheus.scrape_interval_seconds({prometheus.SCRAPE_INTERVAL_ENV: bad})


@pytest.mark.parametrize(("interval", "timeout"), [(15, 10), (60, 10), (5, 4), (1, 1)])
def test_rendered_config_scrapes_and_evaluates_at_the_interval(interval: int, timeout: int) -> None:
    text = prometheus.config_text(ROOT, interval)
    assert f"  scrape_interval: {interval}s\n" in text
    assert f"  evaluation_interval: {interval}s\n" in text
    assert f"  scrape_timeout: {timeout}s\n" in text


# ---- bench/idle.py ----------------------------------------------------------------


def test_idle_cores_by_process_skip_restarted_processes_and_sum_by_component() -> None:
    before = [
        idle.Sample("feed_svc-0", 10, "100", 5.0),
        idle.Sample("feed_svc-1", 11, "100", 7.0),
        idle.Sample("envoy", 12, "100", 1.0),
        idle.Sample("envoy", 13, "101", 30.0),  # the supervised Envoy
        idle.Sample("tweet_svc-0", 14, "100", 9.0),
    ]
    after = [
        idle.Sample("feed_svc-0", 10, "100", 5.6),
        idle.Sample("feed_svc-1", 11, "100", 7.3),
        idle.Sample("envoy", 12, "100", 1.0),
        idle.Sample("envoy", 13, "101", 31.5),
        idle.Sample("tweet_svc-0", 20, "900", 0.4),  # restarted: a new pid
    ]
    per_process = idle.cores_by_process(before, after, 60.0)
    assert per_process == pytest.approx({"feed_svc-0": 0.01, "feed_svc-1": 0.005, "envoy": 0.025})
    assert idle.changed(before, after) == ["tweet_svc-0"]
    assert idle.by_component(per_process) == pytest.approx({"feed_svc": 0.015, "envoy": 0.025})
    assert idle.component_of("cassandra") == "cassandra"
    assert idle.component_of("cassandra-2") == "cassandra"
    assert idle.component_of("edge_sidecar") == "edge_sidecar"


def test_idle_thread_runs_count_thread_by_thread_and_skip_restarted_processes() -> None:
    before = [
        idle.Sample("kafka", 5, "100", 1.0, {"5": 1_000, "6": 4_000, "7": 900}),
        idle.Sample("feed_svc-0", 10, "100", 5.0, {"10": 400}),
    ]
    after = [
        # 6 ran 5,400 more times; 7 ended (its count is gone, not a negative); 8 started within the window.
        idle.Sample("kafka", 5, "100", 1.2, {"5": 1_000, "6": 9_400, "8": 600}),
        idle.Sample("feed_svc-0", 21, "900", 0.1, {"21": 50}),  # restarted: a new pid
    ]
    assert idle.runs_by_process(before, after, 60.0) == pytest.approx({"kafka": 100.0})


def test_thread_runs_read_the_third_field_of_each_threads_schedstat(tmp_path: Path) -> None:
    for tid, line in {"40": "912345 20011 17", "41": "1 2 30 4", "42": "garbled"}.items():
        (tmp_path / "40" / "task" / tid).mkdir(parents=True)
        (tmp_path / "40" / "task" / tid / "schedstat").write_text(line + "\n")
    (tmp_path / "40" / "task" / "43").mkdir()  # ended between the listing and the read
    assert idle.thread_runs(40, tmp_path) == {"40": 17, "41": 30}
    assert idle.thread_runs(41, tmp_path) == {}  # no such process


def test_thread_runs_of_this_process_grow_as_its_thread_sleeps() -> None:
    tid = str(threading.get_native_id())
    before = idle.thread_runs(os.getpid())[tid]
    for _ in range(20):
        time.sleep(0.001)
    assert idle.thread_runs(os.getpid())[tid] >= before + 20


def test_a_window_carries_each_processes_thread_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter(
        [
            [idle.Sample("redis", 3, "1", 0.50, {"3": 100})],
            [idle.Sample("redis", 3, "1", 0.52, {"3": 130})],
        ]
    )
    monkeypatch.setattr(idle, "sample", lambda with_runs: next(samples) if with_runs else [])
    monkeypatch.setattr(idle, "service_calls", lambda: 0)
    monkeypatch.setattr(idle, "edge_requests", lambda: 0)
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(idle.time, "monotonic", lambda: next(clock, 110.0))
    monkeypatch.setattr(idle.time, "sleep", lambda _s: None)
    window = idle.measure(10.0)
    assert window.runs == pytest.approx({"redis": 3.0})
    assert window.per_process == pytest.approx({"redis": 0.002})


def test_wake_cost_is_the_cpu_of_one_sleep_and_wake(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([3.0, 3.0021])
    monkeypatch.setattr(idle.time, "thread_time", lambda: next(clock))
    slept: list[float] = []
    monkeypatch.setattr(idle.time, "sleep", slept.append)
    assert idle.wake_cost_us(cycles=30, pause=0.004) == pytest.approx(70.0)
    assert slept == [0.004] * 30
    with pytest.raises(ValueError):
        idle.wake_cost_us(cycles=0)


def test_idle_summary_is_min_and_median_over_runs() -> None:
    runs = [{"a": 0.03, "b": 0.01}, {"a": 0.01, "b": 0.02}, {"a": 0.02}]
    summary = idle.summarize(runs)
    assert summary["a"] == pytest.approx((0.01, 0.02))
    assert summary["b"] == pytest.approx((0.01, 0.015))  # absent from run 3: not a zero
    assert summary["total"] == pytest.approx((0.02, 0.03))


def test_idle_threads_count_a_new_thread_whole_and_fold_numbers() -> None:
    before = {(1, "10"): ("ReadStage-#", 2.0), (1, "11"): ("ReadStage-#", 1.0), (1, "12"): ("GC", 5.0)}
    after = {
        (1, "10"): ("ReadStage-#", 2.5),
        (1, "11"): ("ReadStage-#", 1.0),
        (1, "12"): ("GC", 5.2),
        (1, "13"): ("ReadStage-#", 0.3),  # started within the window
    }
    assert idle.cores_by_thread(before, after, 10.0) == pytest.approx({"ReadStage-#": 0.08, "GC": 0.02})


# ---- the metrics server --------------------------------------------------------


def test_metrics_server_answers_scrapes_at_once_and_otherwise_sleeps() -> None:
    # Left serving (a daemon thread): shutting it down would wait for its next wake.
    httpd, thread = metrics_server("127.0.0.1", 0)
    port = httpd.server_port
    method = f"Scrape{uuid.uuid4().hex}"
    GRPC_HANDLED.labels("chirp.test.v1.Idle", method, "OK").inc()

    def scrape() -> str:
        # Well inside the poll interval: a server that only answered on its wake would time out.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=METRICS_POLL_SECONDS / 10) as reply:
            assert reply.status == 200
            return str(reply.read().decode())

    def wakes() -> int:
        status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))

    for _ in range(2):  # and again: the serving thread goes on after a scrape
        lines = scrape().splitlines()
        assert any(line.startswith("grpc_server_handled_total{") and method in line for line in lines)
    # Between scrapes the thread sleeps in one wait (prometheus_client's own wakes every 0.5 s).
    time.sleep(0.2)  # the last scrape's request thread is done with the listener
    before = wakes()
    time.sleep(1.2)
    assert wakes() == before
    assert thread.daemon


async def test_a_store_that_fails_its_probes_leaves_the_liveness_name_serving() -> None:
    """A restart does not bring a store back: a liveness probe must not see the outage."""
    health = HealthServicer()

    async def store_down() -> bool:
        return False

    wiring = Wiring(register=lambda _: None, service_names=["chirp.x.v1.X"], probes=[store_down], close=_closed)
    watching = asyncio.create_task(watch_health(health, wiring, "x"))
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if await _status(health, "") == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
        assert await _status(health, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _status(health, "chirp.x.v1.X") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _status(health, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
    finally:
        watching.cancel()


async def _closed() -> None:
    return None


async def _status(health: HealthServicer, name: str) -> int:
    request = health_pb2.HealthCheckRequest(service=name)
    return int((await health.Check(request, cast(grpc.aio.ServicerContext, None))).status)


def _served(fake: FakeProducer, producer: kafka.AsyncProducer) -> None:
    """Wake the idle poll thread and wait until it served the queued client events."""
    producer._produced.set()
    for _ in range(500):
        if not fake.errors:
            return
        time.sleep(0.01)
    raise AssertionError("the poll thread never served the events")


def test_a_fatal_producer_error_calls_on_fatal_once_and_a_passing_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a fatal error every send fails for good, while the process would go on
    holding its outbox relay's shards, publishing none of them (services pass
    `common.server.stop_with_failure`). confluent-kafka raises the error from the poll
    that serves it (it never reaches error_cb): the poll thread must catch it and live."""
    monkeypatch.setattr(kafka, "Producer", FakeProducer)
    stops: list[bool] = []
    producer = kafka.AsyncProducer("127.0.0.1:1", "test", on_fatal=lambda: stops.append(True))
    fake: FakeProducer = producer._producer  # type: ignore[assignment]
    try:
        fake.errors.append(KafkaError(KafkaError._TRANSPORT, "a broker went away"))
        _served(fake, producer)
        assert stops == []
        fake.errors.append(KafkaError(KafkaError._FATAL, "out of order sequence number", fatal=True))
        _served(fake, producer)
        for _ in range(100):
            if stops:
                break
            time.sleep(0.01)
        assert stops == [True]
        assert producer._poller.is_alive()
        fake.refuse = KafkaException(KafkaError(KafkaError._FATAL, "fatal error"))
        with pytest.raises(KafkaException):
            producer.send_nowait("t", b"k", b"v", lambda err: None)
        assert stops == [True]  # once
    finally:
        producer.close()


def test_a_produce_refused_as_fatal_calls_on_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first to meet the fatal error may be a send: its produce() is refused."""
    monkeypatch.setattr(kafka, "Producer", FakeProducer)
    stops: list[bool] = []
    producer = kafka.AsyncProducer("127.0.0.1:1", "test", on_fatal=lambda: stops.append(True))
    fake: FakeProducer = producer._producer  # type: ignore[assignment]
    try:
        fake.refuse = KafkaException(KafkaError(KafkaError._QUEUE_FULL, "queue full"))
        with pytest.raises(KafkaException):
            producer.send_nowait("t", b"k", b"v", lambda err: None)
        assert stops == []
        fake.refuse = KafkaException(KafkaError(KafkaError._FATAL, "fatal error"))
        with pytest.raises(KafkaException):
            producer.send_nowait("t", b"k", b"v", lambda err: None)
        assert stops == [True]
    finally:
        producer.close()


def test_a_stop_with_failure_drains_as_sigterm_does_and_exits_with_status_1() -> None:
    """A process that cannot recover (a fatal producer error) stops cleanly and says so."""
    script = (
        "import asyncio, signal\n"
        "from common import server\n"
        "async def main():\n"
        "    stopped = asyncio.Event()\n"
        "    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)\n"
        "    server.stop_with_failure()\n"
        "    await asyncio.wait_for(stopped.wait(), 5)\n"
        "    print('drained')\n"
        "server.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "drained"
    assert done.returncode == 1
