"""Signals to an asyncio.Event, so every service stops the same way: finish or hand back work, drain."""

import asyncio
import gc
import signal


def stop_event() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM (call from inside the running loop)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


def die_with_parent() -> None:
    """preexec_fn for child processes: on Linux, get SIGTERM when the parent dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def started() -> None:
    """Call once a service is ready: what it made while starting (modules, models, pipelines) lives as
    long as the process, so the cycle collector stops scanning it (no pause grows with the heap)."""
    gc.collect()
    gc.freeze()
