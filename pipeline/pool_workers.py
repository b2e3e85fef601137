"""Pool workers that end with their parent: an initializer for process pools.

A parent killed with SIGKILL (what the OOM killer sends) runs no cleanup, so its pool workers would
live on, blocked on a queue nobody writes to, holding their memory. Each worker watches its parent's
pid from a daemon thread and exits when the parent is gone (it is then re-parented, so `getppid`
changes); the check costs one system call a second and works on every POSIX system.
"""

from __future__ import annotations

import os
import threading
import time

PARENT_POLL_S = 0.5


def exit_with_parent(parent_pid: int) -> None:
    """ProcessPoolExecutor `initializer` (initargs=(os.getpid(),)): the worker exits when its parent does."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # no cleanup to run: the parent that wanted the results is gone

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
