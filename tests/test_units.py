"""Pure logic: config loading, subject names, the task-state fold."""

import pytest

from schemas import subjects
from schemas.events import Accepted, Completed, Failed, ImageResult, Started, TaskStatus
from schemas.jobs import Txt2Img
from services.config import ConfigError, load
from services.task import fold


def test_env_overrides_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("api:\n  keys: ['first-key-123']\n  key_header: X-API-Key\n  port: 9000\n")
    config = load(path, {"DIFFBUS_API__PORT": "9100", "DIFFBUS_WORKER__ACK_WAIT_S": "2.5"})
    assert config.api.port == 9100
    assert config.api.keys == ["first-key-123"]
    assert config.worker.ack_wait_s == 2.5
    assert config.default_model == "demo" and config.uses_demo_model


def test_a_config_written_before_retention_days_still_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("tasks_max_age_days: 3\n")
    assert load(path, {}).retention.days == 3
    path.write_text("tasks_max_age_days: 3\nretention:\n  sweep_every_s: 60\n")
    assert (load(path, {}).retention.days, load(path, {}).retention.sweep_every_s) == (3, 60)


@pytest.mark.parametrize("text, where", [
    ("api:\n  prot: 1\n", "$.api"),
    ("api:\n  port: high\n", "$.api.port"),
    ("models:\n  - name: sd15\n", "$.models"),
    ("default_model: nope\n", "$.default_model"),
])
def test_bad_config_names_the_place(tmp_path, text, where):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"at `{where.replace('$', '[$]')}`"):
        load(path, {})


def test_model_names_become_subject_tokens():
    assert subjects.model_token("SD 1.5/Anime") == "sd_1_5_anime"
    assert subjects.generate_job(subjects.Priority.HIGH, "SD 1.5") == "jobs.generate.high.sd_1_5"
    assert not subjects.is_valid_task_id("a.b") and subjects.is_valid_task_id("abc-123_X")


SPEC = Txt2Img(model="demo", prompt="x", width=64, height=64, steps=2, guidance_scale=7.5, seed=1)
IMAGE = ImageResult(key="results/t/0.png", content_type="image/png", width=64, height=64, seed=1)


def test_fold_follows_a_task_and_terminal_state_is_final():
    record = fold.apply(None, Accepted(task_id="t", at=1.0, owner="alice", spec=SPEC))
    assert record.status is TaskStatus.PENDING
    record = fold.apply(record, Started(task_id="t", at=2.0, worker="w1"))
    assert record.status is TaskStatus.PROCESSING and record.worker == "w1"
    record = fold.apply(record, Completed(task_id="t", at=3.0, worker="w1", images=[IMAGE], elapsed_s=1))
    assert record.status is TaskStatus.COMPLETED and record.images == [IMAGE]
    # A late redelivery's events do not reopen or change a finished task.
    assert fold.apply(record, Started(task_id="t", at=4.0, worker="w2", attempt=2)) == record
    assert fold.apply(record, Failed(task_id="t", at=5.0, error="late")) == record
    assert fold.apply(None, Started(task_id="u", at=1.0, worker="w")) is None


def test_webhook_retry_schedule_jitters_and_honours_retry_after():
    from services.notifier import backoff

    schedule = [5, 30, 120]
    assert backoff.retry_delay(1, schedule, rng=lambda: 0.0) == 4.0
    assert backoff.retry_delay(2, schedule, rng=lambda: 1.0) == pytest.approx(36.0)
    assert backoff.retry_delay(1, schedule, retry_after=60, rng=lambda: 0.5) == 60
    assert backoff.retry_delay(4, schedule) is None
    assert backoff.parse_retry_after("120", now=0) == 120
    assert backoff.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 30) == 30
    assert backoff.parse_retry_after("soon", now=0) is None


@pytest.mark.parametrize("status, outcome", [
    (200, "delivered"), (204, "delivered"), (None, "retry"), (429, "retry"), (500, "retry"),
    (503, "retry"), (410, "gone"), (400, "rejected"), (404, "rejected"), (301, "rejected")])
def test_webhook_status_outcomes(status, outcome):
    from services.notifier import backoff

    assert backoff.outcome(status).value == outcome


@pytest.mark.parametrize("address, allowed", [
    ("93.184.216.34", True), ("127.0.0.1", False), ("10.1.2.3", False), ("169.254.169.254", False),
    ("::1", False), ("::ffff:192.168.0.1", False), ("fd00:ec2::254", False), ("224.0.0.1", False)])
def test_webhook_target_addresses(address, allowed):
    from services import egress

    if allowed:
        egress.check_address(address, [])
    else:
        with pytest.raises(egress.BlockedTarget):
            egress.check_address(address, [])
    egress.check_address("10.1.2.3", egress.networks(["10.0.0.0/8"]))
