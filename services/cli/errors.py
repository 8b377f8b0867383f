"""The one place the package's errors become exit codes: a start-up error is one clear line on
stderr, never a traceback.

    0   done
    1   a generate request failed (the client)
    2   bad configuration or arguments
    3   the environment: NATS unreachable, a port already taken, nats-server missing, storage unreachable
    130 interrupted (Ctrl-C)
"""

import contextlib
import errno
import sys

import nats.errors

from ..config import ConfigError
from ..storage import StorageError
from .embedded import EmbeddedNatsError

CONFIG, ENVIRONMENT, INTERRUPTED = 2, 3, 130


def describe(error: BaseException) -> tuple[int, str] | None:
    """(exit code, the line to print) for an error a user can act on; None for a bug (a traceback)."""
    match error:
        case KeyboardInterrupt():
            return INTERRUPTED, "interrupted"
        case ConfigError() | StorageError():  # storage.* names an endpoint or keys that do not work
            return CONFIG, str(error)
        case EmbeddedNatsError():
            return ENVIRONMENT, str(error)
        case nats.errors.NoServersError() | ConnectionRefusedError():
            return ENVIRONMENT, f"cannot reach NATS ({error or type(error).__name__}); is nats-server running?"
        case OSError(errno=errno.EADDRINUSE):
            return ENVIRONMENT, f"{error.strerror}: {error}"
        case OSError(errno=errno.EACCES) | OSError(errno=errno.EADDRNOTAVAIL):
            return ENVIRONMENT, str(error)
    return None


class Exit(Exception):
    def __init__(self, code: int):
        self.code = code


@contextlib.contextmanager
def exit_codes(command: str):
    """Turn a known error into one line on stderr and `Exit(code)`."""
    try:
        yield
    except BaseException as error:  # noqa: BLE001 - mapped or re-raised
        described = describe(error)
        if described is None:
            raise
        code, line = described
        print(f"diffbus {command}: {line}", file=sys.stderr)
        raise Exit(code) from None
