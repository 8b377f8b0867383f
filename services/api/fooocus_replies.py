"""The shapes of the FooocusAPI dialect's replies, for its OpenAPI description (fooocus_task.task_object
and the fooocus handlers build them; the tests check live replies against them)."""

from typing import Literal

import msgspec


class TaskObject(msgspec.Struct):
    """A task as FooocusAPI's history keeps it."""

    id: int  # the task's number (-1 before it has one)
    task_id: str
    req_params: dict  # the request as sent, input images as URLs
    in_queue_mills: int | None
    start_mills: int | None
    finish_mills: int | None
    task_status: Literal["pending", "running", "finished", "failed", "stop"]
    progress: int  # 0-100
    webhook_url: str
    result: list[str]  # image URLs (base64 with require_base64)
    error_message: str | None
    preview: str | msgspec.UnsetType = msgspec.UNSET  # while running: the latest preview, a data URI


class TaskLists(msgspec.Struct):
    history: list[TaskObject]
    current: list[TaskObject]  # running
    pending: list[TaskObject]


class ModelDetails(msgspec.Struct):
    name: str  # as in model_filenames
    family: str | None  # sd1 | sdxl ...; None until a worker serving the model announced
    width: int  # the size a request without one gets (FooocusAPI's default aspect is scaled to it)
    height: int


class AllModels(msgspec.Struct):
    model_filenames: list[str]
    lora_filenames: list[str]
    models: list[ModelDetails]  # diffbus's addition beside FooocusAPI's two lists


class ControlReply(msgspec.Struct):
    message: str
    task_ids: list[str]


STREAM = {"type": "string", "description": (
    "stream_output: lines `data: {\"progress\", \"preview\", \"message\", \"images\"}`, each followed by an "
    "empty `data:` line, until the message \"Finished\" (with the image URLs), \"Failed: ...\" or \"Stopped\".")}
IMAGE = {"type": "string", "contentMediaType": "image/*",
         "description": "neither async_process nor stream_output: the image itself (image_number forced to 1)"}
