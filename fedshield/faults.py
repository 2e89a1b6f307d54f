"""Crash points for fault-injection tests.

``FEDSHIELD_CRASH_AT=<point>`` in a process's environment makes it die at that point as if
killed with SIGKILL, so tests can stop the aggregator at the worst moments (between writing
a file and recording it) instead of hoping a timed ``kill -9`` lands there. Unset, a crash
point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("upload-stored", "aggregate-written")


def crash_point(point: str) -> None:
    """Die here, without cleanup, if the environment asks for it."""
    if os.environ.get("FEDSHIELD_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
