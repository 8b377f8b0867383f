"""Whether the task database can go on from where it is, or is rebuilt from the TASKS stream: only
when it is missing, written by another projection version, or out of step with its consumer."""

import logging
from pathlib import Path

from nats.js.api import AckPolicy
from nats.js.errors import NotFoundError

from schemas import subjects

from . import db
from .db import TaskDB

log = logging.getLogger("diffbus.projector")


async def why_rebuild(js, db_path: Path, asked: bool) -> str | None:
    """Why the database is rebuilt, or None when it goes on."""
    if asked:
        return "asked to"
    if not db_path.exists():
        return "it does not exist"
    if not db.is_current(db_path):
        return "it was written by another projection version"
    return await _stale(js, db_path)


async def prepare(js, db_path: Path, asked: bool) -> None:
    """Remove the database and its consumer when they must be rebuilt."""
    why = await why_rebuild(js, db_path, asked)
    if why is None:
        return
    log.info("building %s from the TASKS stream: %s", db_path, why)
    db.remove(db_path)
    try:
        await js.delete_consumer(subjects.TASKS, subjects.PROJECTOR_DURABLE)
    except NotFoundError:
        pass


async def _stale(js, db_path: Path) -> str | None:
    """Why the database and its consumer cannot go on together, or None. The consumer's ack floor may
    be past what the database holds (acknowledged events whose commit a power cut undid: commits are
    not fsynced), or the consumer may acknowledge one by one (made by an older projector)."""
    try:
        info = await js.consumer_info(subjects.TASKS, subjects.PROJECTOR_DURABLE)
    except NotFoundError:
        return None
    # nats-py gives the policy as the server spelled it ("all"), not as an AckPolicy member
    if AckPolicy(info.config.ack_policy) is not AckPolicy.ALL or not info.config.deliver_subject:
        return "its consumer was made by an older projector"
    tasks = TaskDB(db_path)
    try:
        if info.ack_floor.stream_seq > tasks.applied_seq:
            return "it misses events it acknowledged (a power cut?)"
    finally:
        tasks.close()
    return None
