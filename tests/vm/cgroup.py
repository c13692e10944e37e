"""Removing a test's cgroup v2 directory once the processes in it have gone.

rmdir(2) of a cgroup fails with EBUSY while a task is still in it, and a killed
workload leaves its cgroup only when it has finished exiting: retry, bounded.
"""

import time
from pathlib import Path


def remove(path: Path, tries: int = 50) -> None:
    """rmdir `path`, retrying every 0.1 s while processes are still exiting; the last error is
    swallowed (a leftover test cgroup must not mask the test's own result)."""
    for _ in range(tries):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # processes still exiting
            time.sleep(0.1)
