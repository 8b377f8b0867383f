"""The shapes of the FooocusAPI dialect's replies: the handlers encode these Structs (the task object is
services/views/fooocus_task.TaskObject, shared with the notifier), and the OpenAPI document describes them."""

import msgspec

from services.views.fooocus_task import TaskObject


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
