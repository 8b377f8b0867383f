"""Task history on the native dialect: paging, filters, deletion, and deletion surviving a rebuild."""

from datetime import UTC, datetime, timedelta

from schemas import subjects
from schemas.events import Accepted, Cancelled, Completed, Deleted, Failed, ImageResult, Started, TaskStatus
from schemas.jobs import Txt2Img
from schemas.queries import TaskList
from services.projector.db import TaskDB

from .stack import ALICE, BOB

FAST = {"num_inference_steps": 2}


async def listing(client, query: str = "", key: str = ALICE):
    async with client.session.get(f"{client.base_url}/api/v1/tasks?{query}", headers={"X-API-Key": key}) as resp:
        return resp.status, await resp.json()


async def test_list_pages_newest_first_scoped_to_the_key(client):
    since = datetime.now(UTC).replace(tzinfo=None).isoformat()  # no zone: UTC
    ids = [await client.submit({"prompt": f"p{i}", **FAST}) for i in range(3)]
    for task_id in ids:
        await client.wait(task_id)
    await client.wait(await client.submit({"prompt": "other", **FAST}))
    status, page = await listing(client, f"page=1&page_size=2&start_at={since}")
    assert status == 200 and page["total"] == 4 and page["page"] == 1 and page["page_size"] == 2
    status, rest = await listing(client, f"page=2&page_size=2&start_at={since}")
    listed = [t["task_id"] for t in page["tasks"] + rest["tasks"]]
    assert listed[1:] == ids[::-1]  # newest first
    assert all(t["status"] == "completed" and t["result_url"] for t in page["tasks"])
    status, filtered = await listing(client, f"status=failed,cancelled&start_at={since}")
    assert status == 200 and filtered["total"] == 0
    status, bobs = await listing(client, f"start_at={since}", key=BOB)
    assert bobs["total"] == 0
    status, later = await listing(client, "start_at=2999-01-01T00:00:00")
    assert later["total"] == 0 and later["tasks"] == []


async def test_bad_listing_parameters_are_422(client):
    for query, field in (("page=0", "page"), ("page_size=1000", "page_size"), ("start_at=yesterday", "start_at"),
                         ("status=done", "status"), ("start_at=2024-01-02&end_at=2024-01-01", "end_at")):
        status, body = await listing(client, query)
        assert status == 422 and body["detail"][0]["loc"] == ["query", field], (query, body)


async def test_delete_removes_the_task_and_its_images(client):
    task, _ = await client.generate({"prompt": "gone", **FAST})
    async with client.session.delete(f"{client.base_url}/api/v1/tasks/{task['task_id']}",
                                     headers={"X-API-Key": BOB}) as resp:
        assert resp.status == 404  # not bob's
    async with client.session.delete(f"{client.base_url}/api/v1/tasks/{task['task_id']}",
                                     headers={"X-API-Key": ALICE}) as resp:
        assert resp.status == 204
    assert (await client.task(task["task_id"])).status == 404
    async with client.session.get(task["result_url"]) as resp:
        assert resp.status == 404


async def test_a_read_that_outruns_the_projector_waits_for_it(client, js):
    """The projector's consumer may deliver an event later than the client who caused it hears back:
    a query waits for the events the stream held when it came."""
    task, _ = await client.generate({"prompt": "outrun", **FAST})
    # Paused until a moment from now: the server resumes delivery itself then (an early resume
    # request, nats-server 2.15, leaves a push consumer waiting for the next message).
    paused_until = datetime.now(UTC) + timedelta(seconds=1.5)
    await js.pause_consumer(subjects.TASKS, subjects.PROJECTOR_DURABLE, paused_until.isoformat().replace("+00:00", "Z"))
    async with client.session.delete(f"{client.base_url}/api/v1/tasks/{task['task_id']}",
                                     headers={"X-API-Key": ALICE}) as resp:
        assert resp.status == 204
    reading = await client.task(task["task_id"])  # asked before the projector is sent `deleted`
    assert datetime.now(UTC) >= paused_until
    assert reading.status == 404


async def test_a_running_task_is_not_deleted(client):
    task_id = await client.submit({"prompt": "busy", "width": 512, "height": 512, "num_inference_steps": 40})
    async with client.session.delete(f"{client.base_url}/api/v1/tasks/{task_id}",
                                     headers={"X-API-Key": ALICE}) as resp:
        assert resp.status == 409 and "cancel" in (await resp.json())["detail"]
    async with client.session.post(f"{client.base_url}/api/v1/tasks/{task_id}/cancel",
                                   headers={"X-API-Key": ALICE}) as resp:
        assert resp.status == 200
    assert (await client.wait(task_id))["status"] == "cancelled"


def test_a_rebuilt_projection_does_not_resurrect_deleted_tasks(tmp_path):
    spec = Txt2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7, seed=1)
    image = ImageResult(key="results/t1/0.png", content_type="image/png", width=64, height=64, seed=1)
    events = [(1, Accepted(task_id="t1", at=1.0, owner="alice", spec=spec)),
              (2, Accepted(task_id="t2", at=2.0, owner="alice", spec=spec)),
              (3, Completed(task_id="t1", at=3.0, worker="w", images=[image], elapsed_s=1)),
              (4, Deleted(task_id="t1", at=4.0, by="alice"))]
    db = TaskDB(tmp_path / "tasks.db")
    db.apply(events)
    assert db.get("t1") is None and db.get(number=2).task_id == "t2"
    db.apply(events[:3])  # a redelivery of older events
    assert db.get("t1") is None
    db.close()
    rebuilt = TaskDB(tmp_path / "again.db")  # a rebuild replays the whole stream
    for pair in events:
        rebuilt.apply([pair])
    assert rebuilt.get("t1") is None and rebuilt.get("t2").number == 2
    rebuilt.close()


def test_pages_and_totals_match_the_rows_whatever_index_serves_them(tmp_path):
    """Totals come from the counts the projector keeps and pages from one index or another (by status
    when the statuses asked for are rare): every combination must give what filtering the rows gives."""
    spec = Txt2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7, seed=1)
    db, events, seq = TaskDB(tmp_path / "tasks.db"), [], 0
    for i in range(300):
        owner, task_id, at = ("alice" if i % 3 else "bob"), f"t{i:03d}", 1000.0 + i // 2  # ties in created_at
        ends = [Started(task_id=task_id, at=at, worker="w"), Completed(task_id=task_id, at=at, worker="w",
                images=[], elapsed_s=1), Failed(task_id=task_id, at=at, error="x"), Cancelled(task_id=task_id, at=at)]
        for event in [Accepted(task_id=task_id, at=at, owner=owner, spec=spec)] + ends[:i % 5][-1:]:  # 0: pending
            seq += 1
            events.append((seq, event))
    events.append((seq + 1, Deleted(task_id="t001", at=2000.0, by="alice")))
    db.apply([pair for pair in events if isinstance(pair[1], Accepted)])
    db.apply([pair for pair in events if not isinstance(pair[1], Accepted)])  # every task changes status
    rows = [(r["owner"], r["status"], r["created_at"], r["number"]) for r in db.rows()]
    status_sets = [[], [TaskStatus.PENDING], [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED],
                   [TaskStatus.PROCESSING, TaskStatus.PENDING], [TaskStatus.FAILED, TaskStatus.CANCELLED]]
    for owner in ("alice", "bob"):
        for statuses in status_sets:
            for created_from, created_to in [(None, None), (1020.0, 1090.5), (None, 1011.0)]:
                for oldest_first in (False, True):
                    want = sorted((r for r in rows if r[0] == owner and (not statuses or r[1] in statuses)
                                   and (created_from is None or r[2] >= created_from)
                                   and (created_to is None or r[2] < created_to)),
                                  key=lambda r: (r[2], r[3]), reverse=not oldest_first)
                    for offset, limit in [(0, 7), (5, 20), (len(want) - 3, 10)]:
                        found, total = db.page(TaskList(owner=owner, statuses=statuses, created_from=created_from,
                                                        created_to=created_to, offset=max(offset, 0), limit=limit,
                                                        oldest_first=oldest_first))
                        assert total == len(want)
                        assert [t.number for t in found] == [r[3] for r in want[max(offset, 0):max(offset, 0) + limit]]
    assert db.get("t001") is None and db.page(TaskList(owner="alice", limit=0))[1] == 199  # t001 deleted
    db.close()
