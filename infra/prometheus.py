"""Run the local Prometheus: scrape config rendered from the topology, rules from infra/prometheus/.

``render_config`` writes ``<state>/conf/prometheus.yml``: one scrape job per
service or worker of ``infra.topology`` (job = service name, one target per
instance with ``instance`` = the instance name, e.g. ``feed_svc-1``), Envoy's
admin ``/stats/prometheus`` (job ``envoy``) and Prometheus itself, every
``CHIRP_SCRAPE_INTERVAL_SECONDS`` (default 15, as in k8s/monitoring; rules are
evaluated as often), with the recording and alerting rules of ``infra/prometheus/`` by absolute
path. ``prometheus_command`` renders it and returns the argv of a Prometheus
that runs in the foreground until SIGTERM (TSDB under
``<state>/data/prometheus``, two days kept, ``POST /-/reload`` enabled).
``prometheus_ready`` tells whether it answers. Standard library only.

Alertmanager is not part of the local stack: alerts are evaluated and shown at
http://127.0.0.1:9090/alerts (and ``/api/v1/alerts``) but not routed anywhere.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from infra import topology

PROMETHEUS_PORT = 9090
PROMETHEUS_BINARY = "/usr/bin/prometheus"  # Debian's package; else `prometheus` on PATH
# Every scrape costs each of the ~20 targets a full render of its metrics: at
# 5 s that was a steady share of an idle stack's CPU. The rules' rate windows
# (5m) and alerts' `for:` (1m and up) hold many samples at 15 s too.
SCRAPE_INTERVAL_ENV = "CHIRP_SCRAPE_INTERVAL_SECONDS"
DEFAULT_SCRAPE_INTERVAL_S = 15
MAX_SCRAPE_TIMEOUT_S = 10
RETENTION = "2d"
RULE_FILES = ("recording_rules.yml", "alerts.yml")
PROBE_TIMEOUT_S = 1.0


def rule_files(root: Path) -> list[Path]:
    """Absolute paths of the rule files Prometheus loads."""
    return [(root / "infra" / "prometheus" / name).resolve() for name in RULE_FILES]


def _q(value: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(value)


def _job(name: str, targets: list[tuple[str, str]], metrics_path: str = "/metrics") -> list[str]:
    """One scrape job; targets are (address, instance label)."""
    lines = [f"  - job_name: {_q(name)}", f"    metrics_path: {_q(metrics_path)}", "    static_configs:"]
    for address, instance in targets:
        lines += [
            f"      - targets: [{_q(address)}]",
            "        labels:",
            f"          instance: {_q(instance)}",
        ]
    return lines


def scrape_interval_seconds(env: Mapping[str, str] = os.environ) -> int:
    """CHIRP_SCRAPE_INTERVAL_SECONDS: whole seconds, at least 1."""
    raw = env.get(SCRAPE_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_SCRAPE_INTERVAL_S
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{SCRAPE_INTERVAL_ENV} must be a whole number of seconds, at least 1, got {raw!r}")
    return int(raw)


def config_text(root: Path, interval_s: int | None = None) -> str:
    """The Prometheus configuration (YAML) for the current topology, scraping
    every `interval_s` (default: scrape_interval_seconds())."""
    host = topology.HOST
    interval = scrape_interval_seconds() if interval_s is None else interval_s
    # A scrape must end before the next starts; Prometheus refuses a longer timeout.
    timeout = max(1, min(MAX_SCRAPE_TIMEOUT_S, interval - 1))
    lines = [
        "# Rendered by infra/prometheus.py from infra/topology.py; edits are overwritten.",
        "global:",
        f"  scrape_interval: {interval}s",
        f"  scrape_timeout: {timeout}s",
        f"  evaluation_interval: {interval}s",
        "rule_files:",
        *(f"  - {_q(str(path))}" for path in rule_files(root)),
        "scrape_configs:",
        *_job("prometheus", [(f"{host}:{PROMETHEUS_PORT}", "prometheus")]),
        *_job("envoy", [(f"{host}:{topology.ENVOY_ADMIN_PORT}", "envoy")], "/stats/prometheus"),
    ]
    jobs: dict[str, list[tuple[str, str]]] = {}  # service name -> its instances, in topology order
    for inst in topology.all_instances():
        jobs.setdefault(inst.service.name, []).append((f"{host}:{inst.metrics_port}", inst.name))
    for name, targets in jobs.items():
        lines += _job(name, targets)
    return "\n".join(lines) + "\n"


def render_config(root: Path, state: Path) -> Path:
    """Write <state>/conf/prometheus.yml and return its path."""
    out = state / "conf" / "prometheus.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = config_text(root)
    tmp = out.with_suffix(".yml.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out


def fingerprint(root: Path) -> str:
    """Changes when the rendered config or a rule file changes (for a restart on `make up`)."""
    digest = hashlib.sha256(config_text(root).encode())
    for path in rule_files(root):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _binary() -> str:
    if Path(PROMETHEUS_BINARY).is_file():
        return PROMETHEUS_BINARY
    return shutil.which("prometheus") or "prometheus"


def prometheus_command(root: Path, state: Path) -> list[str]:
    """Render the config; return the argv of Prometheus in the foreground (stops on SIGTERM)."""
    config = render_config(root, state)
    data = state / "data" / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    return [
        _binary(),
        f"--config.file={config}",
        f"--web.listen-address={topology.HOST}:{PROMETHEUS_PORT}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={RETENTION}",
        "--web.enable-lifecycle",
    ]


def prometheus_ready() -> bool:
    """GET /-/ready answers 200 (rules loaded, TSDB open); never raises."""
    url = f"http://{topology.HOST}:{PROMETHEUS_PORT}/-/ready"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as reply:
            return bool(reply.status == 200)
    except (OSError, ValueError, http.client.HTTPException):  # URLError is an OSError
        return False
