"""The celebrity threshold's cost curve: what pushing one post costs against the
author's follower count, and what pulling costs instead.

Push side, measured: authors of the seeded graph at several follower counts
each post once on an otherwise idle stack; for each post, the time from its
acknowledgement until the fan-out workers report it pushed (their
`chirp_fanout_pushed_per_tweet` histogram counts one more tweet), the
timelines written (the histogram's sum grows by that many; each is a Redis and
a CQL write), and the stack's CPU over that time. A least-squares line through
the points gives the cost per delivered timeline entry, CPU and time.

Pull side: a pulled author costs every read of each follower a little more
(one more recent-ids lookup and a longer merge) instead of costing the post.
The figure comes from the fan-out strategies run (`make bench-full`: the same
feed reads with everyone pushed and with everyone pulled), divided by the
readers' average followees, when such a result exists.

What decides the threshold: both costs grow with the follower count (push:
entries per post; pull: follower reads per unit of time), so their ratio does
not depend on it; what does is time. A push of F entries takes F times the
time per entry, and the followers of the author, and everyone behind them in
the partition, wait for it. The threshold is where one post's push would
exceed the delivery budget.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.load import cpu_spent, stack_cpu_seconds
from infra import topology

FOLLOWER_TARGETS = (10, 30, 100, 300, 1000, 3000, 10000, 30000, 90000)
DELIVERY_BUDGET_MS = 1000.0  # issue 15: delivery under 1 s on an idle stack
WAIT_SECONDS = 60.0
_METRIC = re.compile(r"^chirp_fanout_pushed_per_tweet_(count|sum) ([0-9.e+]+)$", re.MULTILINE)


@dataclass(frozen=True)
class PushPoint:
    followers: int
    pushed: int  # timelines written (followers who read, per CHIRP_ACTIVE_DAYS)
    fanout_ms: float  # acknowledgement to pushed
    cpu_ms: float  # the whole stack's CPU over that span
    cpu_ms_by_component: dict[str, float]


def fanout_totals(scrape: Callable[[str], str] | None = None) -> tuple[float, float]:
    """(tweets pushed, timelines written) so far, over every fan-out worker instance."""
    read = scrape or _scrape
    worker = next(w for w in topology.WORKERS if w.name == "fanout_worker")
    count = total = 0.0
    for inst in topology.instances(worker):
        values = dict(_METRIC.findall(read(f"http://{topology.HOST}:{inst.metrics_port}/metrics")))
        count += float(values.get("count", 0.0))
        total += float(values.get("sum", 0.0))
    return count, total


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def pick_authors(authors: Sequence[Mapping[str, Any]], targets: Sequence[int] = FOLLOWER_TARGETS) -> list[Any]:
    """For each target, the seeded author whose follower count is nearest to it (within a
    factor of two), each author once, ordered by follower count."""
    chosen: dict[int, Mapping[str, Any]] = {}
    for target in targets:
        best = min(authors, key=lambda a: abs(int(a["followers"]) - target), default=None)
        if best is not None and target / 2 <= int(best["followers"]) <= target * 2:
            chosen[int(best["user_id"])] = best
    return sorted(chosen.values(), key=lambda a: int(a["followers"]))


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ys against xs."""
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("a line needs two distinct x values")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def threshold_for_budget(ms_per_entry: float, fixed_ms: float, budget_ms: float = DELIVERY_BUDGET_MS) -> int:
    """The largest follower count whose push fits the delivery budget."""
    if ms_per_entry <= 0:
        raise ValueError("the time per entry must be positive")
    return max(0, int((budget_ms - max(0.0, fixed_ms)) / ms_per_entry))


def pull_ms_per_followee(strategies: Mapping[str, Any] | None, average_following: float) -> float | None:
    """Extra stack CPU per feed read for each pulled followee, from a strategies run."""
    if not strategies or average_following <= 0:
        return None
    try:
        pulled = float(strategies["pull"]["feed"]["stack_cpu_ms_per_req"])
        pushed = float(strategies["push"]["feed"]["stack_cpu_ms_per_req"])
    except (KeyError, TypeError, ValueError):
        return None
    return round((pulled - pushed) / average_following, 4)


def measure_push(post: Callable[[Mapping[str, Any]], None], authors: Sequence[Mapping[str, Any]]) -> list[PushPoint]:
    """One post per author, one at a time, each waited for until it is pushed."""
    points = []
    for author in authors:
        count, total = fanout_totals()
        cpu = stack_cpu_seconds()
        post(author)
        posted = time.monotonic()
        while time.monotonic() - posted < WAIT_SECONDS:
            now_count, now_total = fanout_totals()
            if now_count > count:
                break
            time.sleep(0.01)
        else:
            raise TimeoutError(f"a post by an author of {author['followers']} followers was not pushed in time")
        elapsed = time.monotonic() - posted
        spent = cpu_spent(cpu, stack_cpu_seconds())
        points.append(
            PushPoint(
                followers=int(author["followers"]),
                pushed=int(now_total - total),
                fanout_ms=round(elapsed * 1000, 1),
                cpu_ms=round(sum(spent.values()) * 1000, 1),
                cpu_ms_by_component={k: round(v * 1000, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])},
            )
        )
        time.sleep(0.5)  # let the post's other consumers (rank, relay) finish before the next one
    return points


def curve(
    points: Sequence[PushPoint], strategies: Mapping[str, Any] | None, average_following: float
) -> dict[str, Any]:
    """The measured points, the fitted costs per entry and the threshold they imply."""
    result: dict[str, Any] = {"points": [asdict(p) for p in points], "delivery_budget_ms": DELIVERY_BUDGET_MS}
    usable = [p for p in points if p.pushed > 0]
    if len({p.pushed for p in usable}) >= 2:
        ms_slope, ms_fixed = fit_line([p.pushed for p in usable], [p.fanout_ms for p in usable])
        cpu_slope, cpu_fixed = fit_line([p.pushed for p in usable], [p.cpu_ms for p in usable])
        result |= {
            "fanout_ms_per_entry": round(ms_slope, 4),
            "fanout_ms_fixed": round(ms_fixed, 1),
            "cpu_ms_per_entry": round(cpu_slope, 4),
            "cpu_ms_fixed": round(cpu_fixed, 1),
        }
        if ms_slope > 0:
            result["threshold_for_budget"] = threshold_for_budget(ms_slope, ms_fixed)
    result["pull_cpu_ms_per_followee_per_read"] = pull_ms_per_followee(strategies, average_following)
    return result


def latest_strategies(results: Path) -> dict[str, Any] | None:
    """The newest benchmark result holding a fan-out strategies comparison."""
    found = []
    for path in results.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("strategies"), dict):
            found.append((str(data.get("started", "")), data["strategies"]))
    return max(found, key=lambda kv: kv[0])[1] if found else None


def plot(result: Mapping[str, Any], path: Path) -> Path:
    """Fan-out time and CPU per post against timelines written, with the delivery budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = [p["pushed"] for p in points]
    ax.plot(xs, [p["fanout_ms"] for p in points], "o-", label="post to pushed (ms)")
    ax.plot(xs, [p["cpu_ms"] for p in points], "s--", label="stack CPU per post (ms)")
    ax.axhline(result["delivery_budget_ms"], color="grey", linestyle=":", label="delivery budget")
    if "threshold_for_budget" in result:
        ax.axvline(result["threshold_for_budget"], color="red", linestyle=":", label="threshold for the budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("timelines pushed per post (followers who read)")
    ax.set_ylabel("ms")
    ax.set_title("Push cost per post against follower count")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the returning reader (issue 15: push only to those who read) -------------------


async def _send_away(user_ids: Sequence[int], days: float) -> None:
    """What the fan-out does to a follower who stopped reading: their read record says
    `days` ago and their pushed timeline is gone, so the next read rebuilds it."""
    from common.cache import connect_redis
    from common.keys import feed_key

    client = connect_redis(topology.redis_url())
    try:
        then_ms = int((time.time() - days * 86400) * 1000)
        async with client.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.set(feed_key("read_at", user_id), str(then_ms))
                pipe.delete(feed_key("timeline", user_id))
            await pipe.execute()
    finally:
        await client.aclose()


def send_away(user_ids: Sequence[int], days: float) -> None:
    import asyncio

    asyncio.run(_send_away(user_ids, days))
