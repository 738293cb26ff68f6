"""Run a command as our child and stay its parent until it exits.

Envoy arms PR_SET_PDEATHSIG (SIGTERM when its parent dies), so it cannot be
started by a process that exits right away, as `make up` does. This stays in
between, forwards SIGTERM/SIGINT/SIGHUP, and exits with the child's status.
With --nice, it and the child run at that niceness (common/priority.py; the
edge runs above the services).

    python -m infra.supervise [--nice N] -- CMD [ARGS...]
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType

from common.priority import raise_priority


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--nice"] and len(argv) > 1:
        raise_priority(int(argv[1]))
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    child = subprocess.Popen(argv)

    def forward(signum: int, _frame: FrameType | None) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
