"""The command line: `diffbus up` (supervisor and embedded nats-server), one command per service, the client."""

from .main import main

__all__ = ["main"]
