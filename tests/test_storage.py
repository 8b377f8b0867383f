"""The JetStream object store backend against a real nats-server: what it writes reads back with
nats-py's own object store (and the other way round), rewrites leave no stale chunk behind, and
deletion is final."""

import os

import pytest
from nats.js.object_store import OBJ_ALL_CHUNKS_PRE_TEMPLATE

from schemas import subjects
from services import storage


@pytest.fixture
def js(bare_nc):
    return bare_nc.jetstream()


async def chunk_messages(js) -> int:
    info = await js.stream_info(storage.ObjectStoreStorage.STREAM, subjects_filter=OBJ_ALL_CHUNKS_PRE_TEMPLATE.format(
        bucket=subjects.IMAGES_BUCKET))
    return sum((info.state.subjects or {}).values())


async def test_objects_round_trip_and_interoperate_with_nats_py(js):
    store = storage.ObjectStoreStorage(js)
    bucket = await js.object_store(subjects.IMAGES_BUCKET)
    small, large = os.urandom(5000), os.urandom(300_000)  # one chunk; three chunks
    await store.put("results/a/0.png", small)
    await store.put("results/a/1.png", large)
    assert await store.get("results/a/0.png") == small
    assert await store.get("results/a/1.png") == large
    assert (await bucket.get("results/a/0.png")).data == small  # `nats object get` reads it too
    assert (await bucket.get("results/a/1.png")).data == large
    await bucket.put("inputs/b.png", small[::-1])  # written by nats-py, read here
    assert await store.get("inputs/b.png") == small[::-1]
    assert await store.exists("results/a/0.png") and not await store.exists("results/none.png")
    assert await store.get("results/none.png") is None


async def test_rewrites_keep_one_copy_and_deletes_are_final(js):
    store = storage.ObjectStoreStorage(js)
    bucket = await js.object_store(subjects.IMAGES_BUCKET)
    first, second, large = b"\x89PNG first" * 100, b"\x89PNG second" * 90, os.urandom(200_000)
    await store.put("results/t/0.png", first)
    await store.put("results/t/0.png", second)  # a retried job stores its image again
    assert await store.get("results/t/0.png") == second
    assert (await bucket.get("results/t/0.png")).data == second
    assert await chunk_messages(js) == 1

    await store.put("results/t/0.png", large)  # small -> large -> small: nothing stale is left
    assert await store.get("results/t/0.png") == large
    await store.put("results/t/0.png", first)
    assert await store.get("results/t/0.png") == first
    assert await chunk_messages(js) == 1

    await store.delete("results/t/0.png")
    assert await store.get("results/t/0.png") is None
    assert not await store.exists("results/t/0.png")
    assert await chunk_messages(js) == 0
