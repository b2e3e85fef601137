"""One-line errors for the data stages' command lines: the user sees what to change, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool

from pipeline.config import ConfigError
from pipeline.masks import DataError

SKIP_HINT = "(set data.skip_bad: true to skip and report bad files)"


def run_stage(prog: str, work: Callable[[], int]) -> int:
    """Return `work()`; a params, data or OS failure (e.g. disk full) prints one line and returns 2.

    Stages publish atomically, so after an OSError nothing looks complete and a re-run starts clean.
    A labelling worker that died (e.g. killed for memory) is reported the same way.
    """
    try:
        return work()
    except DataError as exc:
        print(f"{prog}: {exc} {SKIP_HINT}", file=sys.stderr)
    except (ConfigError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
    except BrokenProcessPool as exc:
        hint = "lower data.workers if memory is short"
        print(f"{prog}: a labelling worker died ({exc}); {hint}", file=sys.stderr)
    return 2
