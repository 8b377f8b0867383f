"""The bus helpers every service shares: a service's connection (streams made on entering, drained on
leaving) against a real nats-server, and the heartbeat of a message in hand with a fake message."""

import asyncio
import time

import pytest

from schemas import subjects
from services import bus
from services.cli.embedded import EmbeddedNats, free_port
from services.config import load


async def test_a_service_connection_makes_the_streams_and_is_drained_on_leaving(tmp_path):
    with EmbeddedNats(f"nats://127.0.0.1:{free_port()}", tmp_path / "jetstream") as server:
        config = load(None, {}, nats={"url": server.url})
        async with bus.serving(config, "test") as nc:
            assert (await nc.jetstream().stream_info(subjects.TASKS)).config.name == subjects.TASKS
            await nc.jetstream().key_value(subjects.CANCEL_BUCKET)  # buckets too
        assert nc.is_closed
        with pytest.raises(RuntimeError, match="refused"):
            async with bus.serving(config, "test") as nc:
                raise RuntimeError("refused")  # a service failing while starting still lets go
        assert nc.is_closed


class FakeMessage:
    def __init__(self, failing: int):
        self.beats, self.failing = 0, failing

    async def in_progress(self) -> None:
        self.beats += 1
        if self.beats <= self.failing:
            raise ConnectionResetError("lost the server for a moment")


async def test_a_message_in_hand_is_heartbeaten_until_cancelled_and_a_missed_beat_does_not_stop_it():
    msg = FakeMessage(failing=1)
    heartbeat = asyncio.create_task(bus.keep_alive(msg, ack_wait_s=0.03))
    deadline = time.monotonic() + 10
    while msg.beats < 3:
        assert time.monotonic() < deadline, "no heartbeat after the first failed"
        await asyncio.sleep(0.01)
    heartbeat.cancel()
    await asyncio.gather(heartbeat, return_exceptions=True)
    beats = msg.beats
    await asyncio.sleep(0.05)
    assert heartbeat.cancelled() and msg.beats == beats
