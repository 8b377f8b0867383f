"""Pure logic: config loading, subject names, the task-state fold."""

import pytest

from schemas import subjects
from schemas.events import Accepted, Completed, Failed, ImageResult, Started, TaskStatus
from schemas.jobs import Txt2Img
from services import taskstate
from services.config import ConfigError, load


def test_env_overrides_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("api:\n  keys: ['first-key-123']\n  key_header: X-API-Key\n  port: 9000\n")
    config = load(path, {"DIFFBUS_API__PORT": "9100", "DIFFBUS_WORKER__ACK_WAIT_S": "2.5"})
    assert config.api.port == 9100
    assert config.api.keys == ["first-key-123"]
    assert config.worker.ack_wait_s == 2.5
    assert config.default_model == "demo" and config.uses_demo_model


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
    record = taskstate.apply(None, Accepted(task_id="t", at=1.0, owner="alice", spec=SPEC))
    assert record.status is TaskStatus.PENDING
    record = taskstate.apply(record, Started(task_id="t", at=2.0, worker="w1"))
    assert record.status is TaskStatus.PROCESSING and record.worker == "w1"
    record = taskstate.apply(record, Completed(task_id="t", at=3.0, worker="w1", images=[IMAGE], elapsed_s=1))
    assert record.status is TaskStatus.COMPLETED and record.images == [IMAGE]
    # A late redelivery's events do not reopen or change a finished task.
    assert taskstate.apply(record, Started(task_id="t", at=4.0, worker="w2", attempt=2)) == record
    assert taskstate.apply(record, Failed(task_id="t", at=5.0, error="late")) == record
    assert taskstate.apply(None, Started(task_id="u", at=1.0, worker="w")) is None
