"""The FooocusAPI dialect's other routes: the /tasks history, one task, the model and style lists, the
stop/skip control and /ping."""

from aiohttp import web

from schemas.events import TaskStatus
from schemas.queries import TaskList

from . import apidoc, history
from . import styles as prompt_styles
from .context import CTX
from .fooocus import DOCS, _view, principal
from .fooocus_replies import AllModels, ControlReply, ModelDetails, TaskLists, TaskObject
from .replies import json_reply

TIME_PARAMS = (apidoc.Param("start_at", description="ISO 8601, e.g. 2024-07-03T12:22:30 (UTC without a zone)"),
               apidoc.Param("end_at", description="ISO 8601; default now"))


LISTS = {"history": [s for s in TaskStatus if s.is_terminal()], "current": [TaskStatus.PROCESSING],
         "pending": [TaskStatus.PENDING]}


@DOCS.route("GET", "/tasks", "Task history: history, current and pending", response=TaskLists, errors=(401, 422),
            params=(apidoc.Param("query", schema={"enum": ["all", "current", "pending", "history"], "default": "all"}),
                    apidoc.Param("page", schema={"type": "integer", "minimum": 0, "default": 0}),
                    apidoc.Param("page_size", schema={"type": "integer", "minimum": 1, "maximum": 100}),
                    *TIME_PARAMS, apidoc.Param("action", schema={"enum": ["delete"]},
                                               description="delete the finished tasks from start_at to end_at")))
async def tasks(request: web.Request) -> web.Response:
    """GET /tasks?query=all|current|pending|history&page=&page_size=&start_at=&end_at=[&action=delete]:
    always {history, current, pending}. action=delete deletes the finished tasks in the time range
    (rows and result images; inputs stay)."""
    ctx = request.app[CTX]
    who = principal(request)
    query = request.query.get("query", "all")
    if query not in ("all", *LISTS):
        raise history.query_error("query", "one of all, current, pending, history")
    deleted = set()
    if request.query.get("action") == "delete":
        if "start_at" not in request.query:
            raise history.query_error("start_at", "action=delete needs start_at (and end_at, default now)")
        deleted = {r.task_id for r in await history.delete_all(request, who, history.task_list(request, who, []))}
    elif request.query.get("action"):
        raise history.query_error("action", "the only action is delete")
    file_url = ctx.file_urls(request)
    out: dict[str, list] = {name: [] for name in LISTS}
    for name, statuses in LISTS.items():
        if query in ("all", name):
            page = await ctx.tasks.page(history.task_list(request, who, statuses, first_page=0))
            out[name] = [await _view(ctx, r, file_url) for r in page.tasks if r.task_id not in deleted]
    return web.json_response(out)


@DOCS.route("GET", "/tasks/{task_id}", "One task", response=TaskObject, errors=(401, 404))
async def task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    record = await ctx.tasks.get(request.match_info["task_id"], principal(request))
    return web.json_response(await _view(ctx, record, ctx.file_urls(request)))


@DOCS.route("GET", "/v1/engines/all-models", "Model and LoRA file names", response=AllModels, errors=(401,))
async def all_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    principal(request)
    details = []
    for m in ctx.config.models:
        info, (width, height) = ctx.workers.model_info(m.name), ctx.workers.default_size(m)
        details.append(ModelDetails(name=m.name, family=info and info.family, width=width, height=height))
    return json_reply(AllModels(model_filenames=[m.name for m in ctx.config.models],
                                lora_filenames=sorted(ctx.loras.available(ctx.config.default_model)), models=details))


@DOCS.route("GET", "/v1/engines/styles", "Style names", response=list[str], errors=(401,))
async def style_names(request: web.Request) -> web.Response:
    principal(request)
    return web.json_response(sorted(prompt_styles.load(request.app[CTX].config)))


@DOCS.route("POST", "/v1/engine/control", "Stop the calling key's running task", response=ControlReply,
            errors=(401, 422), params=(apidoc.Param("action", schema={"enum": ["stop", "skip"], "default": "stop"}),))
async def control(request: web.Request) -> web.Response:
    """POST /v1/engine/control?action=stop|skip: end the calling key's running task. diffbus makes a
    task's images together, so skip (Fooocus: on to the next image) stops the task like stop."""
    ctx = request.app[CTX]
    who = principal(request)
    action = request.query.get("action", "stop")
    if action not in ("stop", "skip"):
        raise history.query_error("action", "one of stop, skip")
    running = await ctx.tasks.page(TaskList(owner=who.owner, statuses=[TaskStatus.PROCESSING]))
    for record in running.tasks:
        await ctx.tasks.cancel(record.task_id, who)
    return json_reply(ControlReply(message=f"{action}: {len(running.tasks)} task(s)",
                                   task_ids=[r.task_id for r in running.tasks]))


@DOCS.route("GET", "/ping", "Is the service up", security=(), response={"const": "pong"}, media_type="text/plain")
async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


def register(app: web.Application) -> None:
    app.router.add_get("/tasks", tasks)
    app.router.add_get("/tasks/{task_id}", task)
    app.router.add_get("/v1/engines/all-models", all_models)
    app.router.add_get("/v1/engines/styles", style_names)
    app.router.add_post("/v1/engine/control", control)
    app.router.add_get("/ping", ping)
