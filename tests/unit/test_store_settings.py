"""The local Cassandra and Kafka restart when their settings change, and their idle settings keep their bounds."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from common import cache, kafka
from infra import jvm, stack, topology
from rank_svc import events

ROOT = Path(__file__).resolve().parents[2]


def _cassandra(root: Path, state: Path) -> str:
    nodes = topology.cassandra_nodes()
    return jvm.cassandra_fingerprint(root, state, nodes[0], nodes)


def _kafka(root: Path, state: Path) -> str:
    nodes = topology.kafka_nodes()
    return jvm.kafka_fingerprint(root, state, nodes[0], nodes, 1, 1)


def _copy_templates(tmp_path: Path) -> Path:
    for component, name in (("cassandra", "cassandra.yaml.in"), ("kafka", "server.properties.in")):
        (tmp_path / "infra" / component).mkdir(parents=True)
        shutil.copy(ROOT / "infra" / component / name, tmp_path / "infra" / component / name)
    return tmp_path


def test_fingerprints_are_stable_and_need_no_jars(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _cassandra(ROOT, state) == _cassandra(ROOT, state)
    assert _kafka(ROOT, state) == _kafka(ROOT, state)
    assert not state.exists()  # nothing rendered or created: `up` computes them for running nodes too


def test_a_changed_template_changes_the_fingerprint(tmp_path: Path) -> None:
    root = _copy_templates(tmp_path / "root")
    state = tmp_path / "state"
    before = (_cassandra(root, state), _kafka(root, state))
    with (root / "infra" / "cassandra" / "cassandra.yaml.in").open("a") as f:
        f.write("dynamic_snitch_update_interval: 1000ms\n")
    with (root / "infra" / "kafka" / "server.properties.in").open("a") as f:
        f.write("log.cleaner.backoff.ms=30000\n")
    assert _cassandra(root, state) != before[0]
    assert _kafka(root, state) != before[1]


def test_jvm_options_and_commitlog_mode_change_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    before = (_cassandra(ROOT, state), _kafka(ROOT, state))
    monkeypatch.setattr(jvm, "IDLE_JVM_OPTS", ())
    assert (_cassandra(ROOT, state), _kafka(ROOT, state)) != before
    monkeypatch.undo()
    monkeypatch.setattr(jvm, "JVM_TIMER_SLACK_NS", jvm.JVM_TIMER_SLACK_NS * 2)
    changed = (_cassandra(ROOT, state), _kafka(ROOT, state))
    assert changed[0] != before[0] and changed[1] != before[1]
    monkeypatch.undo()
    monkeypatch.setenv(jvm.COMMITLOG_ENV, "periodic")
    assert _cassandra(ROOT, state) != before[0]


def test_the_commit_log_is_synced_before_acknowledging_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(jvm.COMMITLOG_ENV, raising=False)
    assert jvm._commitlog_sync() == "commitlog_sync: batch"
    monkeypatch.setenv(jvm.COMMITLOG_ENV, "group")
    assert jvm._commitlog_sync().startswith("commitlog_sync: group\ncommitlog_sync_group_window:")
    monkeypatch.setenv(jvm.COMMITLOG_ENV, "sometimes")
    with pytest.raises(RuntimeError, match="batch"):
        jvm._commitlog_sync()


def test_cluster_nodes_stop_at_c1_and_a_single_node_keeps_c2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's JVMs start on crowded cores; the single node is the one benchmarked."""
    deps = tmp_path / "deps"
    for component in ("cassandra", "kafka"):
        (deps / component).mkdir(parents=True)
        (deps / component / "jamm-0.4.0.jar").touch()
    state = tmp_path / "state"
    root = _copy_templates(tmp_path / "root")
    single = topology.StoreNode("cassandra", "cassandra", "127.0.0.1", 9042, 1)
    cluster = [topology.StoreNode("cassandra", f"cassandra-{i}", f"127.0.0.{i}", 9042, i) for i in (1, 2, 3)]
    brokers = [topology.StoreNode("kafka", f"kafka-{i}", f"127.0.0.{i}", 9092, i) for i in (1, 2, 3)]
    c1 = "-XX:TieredStopAtLevel=1"
    assert c1 in jvm.cassandra_command(root, deps, state, cluster[1], cluster)
    # and the batchlog keeps one copy, so a node not yet convicted stalls only the batches it was picked for
    assert "-Dcassandra.batchlog.required_replica_count=1" in jvm.cassandra_command(
        root, deps, state, cluster[1], cluster
    )
    assert c1 in jvm.kafka_command(root, deps, state, brokers[1], brokers, 3, 2)
    assert c1 not in jvm.cassandra_command(root, deps, state, single, [single])
    assert c1 not in jvm.kafka_command(root, deps, state, brokers[0], brokers[:1], 1, 1)
    # and the option is in the fingerprint: a running cluster node restarts to take it
    with_c1 = jvm.cassandra_fingerprint(root, state, cluster[1], cluster)
    kafka_with_c1 = jvm.kafka_fingerprint(root, state, brokers[1], brokers, 3, 2)
    with monkeypatch.context() as patched:
        patched.setattr(jvm, "CASSANDRA_BATCHLOG_OPTS", ())
        assert jvm.cassandra_fingerprint(root, state, cluster[1], cluster) != with_c1
    monkeypatch.setattr(jvm, "CLUSTER_JIT_OPTS", ())
    assert jvm.cassandra_fingerprint(root, state, cluster[1], cluster) != with_c1
    assert jvm.kafka_fingerprint(root, state, brokers[1], brokers, 3, 2) != kafka_with_c1


def test_every_fingerprinted_option_is_in_the_command(tmp_path: Path) -> None:
    """What the fingerprint digests is what the node runs with: no option in one and not the other."""
    deps = tmp_path / "deps"
    for component in ("cassandra", "kafka"):
        (deps / component).mkdir(parents=True)
        (deps / component / "jamm-0.4.0.jar").touch()
    root = _copy_templates(tmp_path / "root")
    state = tmp_path / "state"
    for size in (1, 3):
        nodes = [topology.StoreNode("cassandra", f"cassandra-{i}", f"127.0.0.{i}", 9042, i) for i in range(1, size + 1)]
        brokers = [topology.StoreNode("kafka", f"kafka-{i}", f"127.0.0.{i}", 9092, i) for i in range(1, size + 1)]
        command = jvm.cassandra_command(root, deps, state, nodes[-1], nodes)
        assert set(jvm._cassandra_jvm_opts(nodes)) <= set(command)
        assert len(command) == len(set(command))
        command = jvm.kafka_command(root, deps, state, brokers[-1], brokers, size, min(2, size))
        assert set(jvm._kafka_jvm_opts(brokers)) <= set(command)
        assert len(command) == len(set(command))


def test_store_components_carry_their_fingerprint() -> None:
    stores = {c.name: c for c in stack._store_components()}
    for node in [*topology.cassandra_nodes(), *topology.kafka_nodes()]:
        assert stores[node.name].fingerprint, node.name


def test_a_parked_fetch_leaves_time_for_a_list_offsets_queued_behind_it() -> None:
    # The broker answers one request per connection at a time: offsets_for_times
    # waits out the consumer's parked fetch before its own timeout runs down.
    assert kafka.FETCH_WAIT_MS / 1000 <= events.BROKER_TIMEOUT_SECONDS / 2


def test_the_single_broker_runs_fewer_threads_and_heartbeats_than_the_clusters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One broker idles on few threads and heartbeats every 3 s; the cluster's keep enough
    threads to ride out a killed peer and fence it within 4 s."""
    deps = tmp_path / "deps"
    (deps / "kafka").mkdir(parents=True)
    (deps / "kafka" / "kafka-clients.jar").touch()
    state = tmp_path / "state"
    brokers = [topology.StoreNode("kafka", f"kafka-{i}", f"127.0.0.{i}", 9092, i) for i in (1, 2, 3)]

    def threads(node: topology.StoreNode, cluster: list[topology.StoreNode], replication: int) -> dict[str, str]:
        jvm.kafka_command(ROOT, deps, state, node, cluster, replication, min(2, replication))
        config = state / "conf" / f"{node.name}.properties"
        settings = dict(line.split("=", 1) for line in config.read_text().splitlines() if line and line[0] != "#")
        keys = (
            "num.network.threads",
            "num.io.threads",
            "group.coordinator.threads",
            "broker.heartbeat.interval.ms",
            "broker.session.timeout.ms",
        )
        return {k: settings[k] for k in keys}

    assert threads(brokers[0], brokers[:1], 1) == {
        "num.network.threads": "1",
        "num.io.threads": "2",
        "group.coordinator.threads": "1",
        "broker.heartbeat.interval.ms": "3000",
        "broker.session.timeout.ms": "9000",
    }
    assert threads(brokers[1], brokers, 3) == {
        "num.network.threads": "2",
        "num.io.threads": "4",
        "group.coordinator.threads": "4",
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
    }
    # and a changed count restarts a running broker
    before = jvm.kafka_fingerprint(ROOT, state, brokers[1], brokers, 3, 2)
    monkeypatch.setattr(jvm, "KAFKA_CLUSTER_THREADS", (3, 4, 4))
    assert jvm.kafka_fingerprint(ROOT, state, brokers[1], brokers, 3, 2) != before


def test_only_the_clusters_nodes_rank_replicas_with_the_dynamic_snitch_and_time_writes_out_at_1_s(
    tmp_path: Path,
) -> None:
    """A single node has no other replica to rank; its config turns the snitch's 100 ms re-scoring off."""
    deps = tmp_path / "deps"
    (deps / "cassandra").mkdir(parents=True)
    (deps / "cassandra" / "jamm-0.4.0.jar").touch()
    state = tmp_path / "state"
    nodes = [topology.StoreNode("cassandra", f"cassandra-{i}", f"127.0.0.{i}", 9042, i) for i in (1, 2, 3)]

    def setting(node: topology.StoreNode, cluster: list[topology.StoreNode], key: str = "dynamic_snitch") -> str:
        jvm.cassandra_command(ROOT, deps, state, node, cluster)
        config = (state / "conf" / f"{node.name}.yaml").read_text().splitlines()
        (line,) = [line for line in config if line.startswith(f"{key}:")]
        return line.split(":", 1)[1].strip()

    assert setting(nodes[0], nodes[:1]) == "false"
    assert setting(nodes[1], nodes) == "true"
    # A cluster coordinator gives up on an unconvicted node's batchlog copy within the clients'
    # 2 s, so the driver can send the batch to another; the single node keeps the default.
    assert setting(nodes[1], nodes, "write_request_timeout") == "1000ms"
    assert setting(nodes[0], nodes[:1], "write_request_timeout") == "2000ms"


def test_the_single_redis_runs_its_timer_at_hz_2_and_a_changed_config_restarts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The single Redis idles on a slower timer; the cluster's nodes keep the default
    (their failure detection runs on it). `up` restarts a server whose config changed."""

    def settings(name: str) -> dict[str, str]:
        lines = (ROOT / "infra" / "redis" / name).read_text().splitlines()
        return dict(line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))

    assert settings("redis.conf")["hz"] == "2"
    assert settings("redis-cluster.conf").get("hz", "10") == "10"
    monkeypatch.setenv("CHIRP_TOPOLOGY", "single")
    (redis,) = [c for c in stack.components(prepare=False) if c.name == "redis"]
    (node,) = topology.redis_nodes()
    assert redis.fingerprint == stack._redis_fingerprint(node, False)
    assert stack._redis_fingerprint(node, False) != stack._redis_fingerprint(node, True)


@pytest.mark.parametrize("chosen", [topology.SINGLE, topology.CLUSTER])
def test_the_state_redis_is_the_caches_config_that_never_evicts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, chosen: str
) -> None:
    """Counters and tallies go to a Redis of their own (CHIRP_REDIS_STATE_URL): the cache's
    configuration with noeviction last on the command line (the last setting wins), as
    many nodes as the cache on ports of its own; the cache keeps evicting."""
    monkeypatch.setenv("CHIRP_TOPOLOGY", chosen)
    monkeypatch.setattr(stack, "_data", lambda name: tmp_path / name)
    comps = {c.name: c for c in stack.components(prepare=False)}
    cache, state = topology.redis_nodes(), topology.state_redis_nodes()
    assert len(state) == len(cache) and not {n.port for n in state} & {n.port for n in cache}
    for node in state:
        argv = comps[node.name].argv()
        assert argv[-4:] == ["--maxmemory-policy", "noeviction", "--maxmemory", "256mb"]
        assert comps[node.name].fingerprint != comps[cache[0].name].fingerprint  # a change restarts it
    for node in cache:
        assert "noeviction" not in comps[node.name].argv()
    assert topology.state_redis_url().count("redis://") == len(state)
    assert all(f":{node.port}" in topology.state_redis_url() for node in state)


def test_a_state_redis_url_naming_the_cache_is_said_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """Counters and tallies in the cache would be evicted again: the services say so."""
    cache_url = "redis://127.0.0.1:6379/0"
    with caplog.at_level(logging.WARNING, logger="common.cache"):
        cache.connect_state_redis("redis://127.0.0.1:6390/0", cache_url)
        assert not caplog.records
        cache.connect_state_redis("redis://127.0.0.1:6379", "redis://127.0.0.1:6380,redis://127.0.0.1:6379")
    assert "CHIRP_REDIS_STATE_URL names a node of the cache's" in caplog.text
