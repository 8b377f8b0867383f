"""OpenAPI 3.1, generated from what each dialect declares beside its handlers.

A dialect module makes one `Docs` and decorates each handler with the routes it serves:

    DOCS = apidoc.Docs("native", error_model=FastApiError)

    @DOCS.route("POST", "/api/v1/generate", "Generate images", body=GenerateRequest, response=TaskCreated,
                errors=(401, 422), examples=seed_examples.NATIVE_GENERATE)
    async def generate(request): ...

`body` is the model the handler validates with (pydantic or msgspec), so the document cannot drift
from validation; `examples` are request bodies (or functions of the config giving one), each sent to
a live server by the tests. `document()` walks the app's router and describes each route by what its
handler declares; `undocumented()` names the routes that declare nothing (a test keeps it empty)."""

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.config import Config

from .field_comments import describe

REF = "#/components/schemas/{model}"

# Every auth scheme a dialect may name; the native key header's name comes from the config.
SECURITY_SCHEMES: dict[str, Callable[[Config], dict]] = {
    "ApiKey": lambda config: {"type": "apiKey", "in": "header", "name": config.api.key_header,
                              "description": "An API key from `api.keys` in config.yaml."},
    "ApiKeyQuery": lambda config: {"type": "apiKey", "in": "query", "name": "api_key",
                                   "description": "The API key as a query parameter, for browsers' "
                                                  "WebSocket, which cannot set headers."},
    "HTTPBasic": lambda config: {"type": "http", "scheme": "basic",
                                 "description": "AUTOMATIC1111's --api-auth: any user name, the API key as "
                                                "the password."},
    "ApiSecret": lambda config: {"type": "apiKey", "in": "header", "name": "X-API-SECRET",
                                 "description": "sd_work_manager's secret header: an API key."},
}

STATUS_TEXT = {
    400: "Bad request",
    401: "No valid credentials",
    404: "Not found (a task of another key is not found either)",
    409: "The task already finished",
    413: "The request body is over api.max_body_bytes",
    422: "Invalid request: every invalid field is named",
    429: "A quota of the key is reached (quotas: max_queued, max_running, per_minute): nothing was queued",
    500: "The task failed",
    503: "Not available on this server",
    504: "The task did not finish within api.sync_timeout_s",
}

Example = dict | Callable[[Config], dict]


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"  # query | header | path
    schema: dict | None = None  # default: a string
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: /api/v1/tasks/{task_id}
    summary: str
    description: str
    tag: str
    body: type | None
    response: type | dict | None  # a model, a JSON Schema, or None (no body)
    media_type: str
    security: tuple[str, ...]
    errors: tuple[int, ...]
    error_model: type | None
    params: tuple[Param, ...]
    examples: dict[str, Example]
    status: int  # of success
    alternatives: dict[str, type | dict]  # more media types of the success response
    owner: "Docs" = field(compare=False, repr=False)

    @property
    def operation_id(self) -> str:
        words = re.sub(r"[{}]", "", self.path).replace("-", "_").strip("/").split("/")
        slash = ["slash"] if self.path.endswith("/") and self.path != "/" else []  # /a/ and /a are two routes
        return "_".join([self.tag, self.method.lower(), *filter(None, words), *slash]).replace(".", "_")


class Docs:
    """One dialect's documented routes, declared by decorating their handlers."""

    def __init__(self, tag: str, description: str = "", *, security: tuple[str, ...] = ("ApiKey",),
                 error_model: type | None = None, schemas: Iterable[type] = ()):
        self.tag = tag
        self.schemas = tuple(schemas)  # more components that descriptions name (e.g. what a stream carries)
        self.description = description
        self.security = security
        self.error_model = error_model
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, summary: str, *, body: type | None = None,
              response: type | dict | None = None, media_type: str = "application/json",
              security: tuple[str, ...] | None = None, errors: Iterable[int] = (),
              params: Iterable[Param] = (), examples: dict[str, Example] | None = None,
              description: str | None = None, status: int = 200,
              alternatives: dict[str, type | dict] | None = None):
        def declare(handler):
            self.operations.append(Operation(
                method=method.upper(), path=path, summary=summary, tag=self.tag,
                description=description if description is not None else _doc(handler),
                body=body, response=response, media_type=media_type,
                security=self.security if security is None else security,
                errors=tuple(errors), error_model=self.error_model, params=tuple(params),
                examples=examples or {}, status=status, alternatives=alternatives or {}, owner=self))
            handler.__dict__.setdefault("apidoc", []).append(self.operations[-1])
            return handler
        return declare


def _doc(handler) -> str:
    text = (handler.__doc__ or "").strip()
    return re.sub(r"\s*\n\s*", " ", text)


def openapi_path(aiohttp_path: str) -> str:
    """/files/{key:.+} -> /files/{key}."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", aiohttp_path)


def routes(app: web.Application) -> list[tuple[str, str, object]]:
    """(method, OpenAPI path, handler) of every route but HEAD and static files."""
    out = []
    for route in app.router.routes():
        if route.method == "HEAD" or isinstance(route.resource, web.StaticResource) or route.resource is None:
            continue
        out.append((route.method, openapi_path(route.resource.canonical), route.handler))
    return out


def operations(app: web.Application) -> list[Operation]:
    """The documented operations of the routes the app has (a handler's declaration must match its route)."""
    return [op for method, path, handler in routes(app) for op in getattr(handler, "apidoc", [])
            if (op.method, op.path) == (method, path)]


def undocumented(app: web.Application) -> list[str]:
    documented = {(op.method, op.path) for op in operations(app)}
    return [f"{method} {path}" for method, path, _ in routes(app) if (method, path) not in documented]


class _Schemas:
    """Component schemas from pydantic models and msgspec types, referenced by name."""

    def __init__(self, models: Iterable[tuple[type, str]]):
        pydantic_models = [(m, mode) for m, mode in dict.fromkeys(models) if _is_pydantic(m)]
        refs, defs = models_json_schema(pydantic_models, ref_template=REF) if pydantic_models else ({}, {})
        refs, defs, renames = _short_names({model: ref for (model, _), ref in refs.items()}, defs.get("$defs", {}))
        self.components: dict = defs
        self.refs = refs
        describe(defs, [m for m, _ in pydantic_models],
                 lambda cls: renames.get(f"{cls.__module__.replace('.', '__')}__{cls.__name__}", cls.__name__))
        others = [m for m, _ in dict.fromkeys(models) if not _is_pydantic(m)]
        if others:
            found, components = msgspec.json.schema_components(others, ref_template=REF.replace("model", "name"))
            clash = set(components) & set(self.components)
            if clash:
                raise ValueError(f"two models share the schema names {sorted(clash)}: rename one")
            describe(components, others)
            self.components.update(components)
            self.refs.update(zip(others, found))

    def of(self, model: type | dict) -> dict:
        return model if isinstance(model, dict) else self.refs[model]


def _short_names(refs: dict, defs: dict) -> tuple[dict, dict, dict]:
    """Models of the same name in two dialects: pydantic names them by module path
    (services__api__fooocus_request__GenerateRequest); call them FooocusGenerateRequest instead (the
    dialect: the module's name up to its first underscore)."""
    renames = {name: name.split("__")[-2].split("_")[0].capitalize() + name.split("__")[-1]
               for name in defs if "__" in name}
    if not renames:
        return refs, defs, renames
    text = json.dumps([list(refs.values()), defs])
    for old, new in renames.items():
        text = text.replace(f'"{REF.format(model=old)}"', f'"{REF.format(model=new)}"')
    ref_list, defs = json.loads(text)
    return dict(zip(refs, ref_list)), {renames.get(k, k): v for k, v in defs.items()}, renames


def _is_pydantic(model) -> bool:
    return isinstance(model, type) and issubclass(model, BaseModel)


def _parameters(op: Operation) -> list[dict]:
    names = re.findall(r"\{(\w+)\}", op.path)
    out = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    for p in op.params:
        out.append({"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                    "schema": p.schema or {"type": "string"}, **({"description": p.description} if p.description
                                                                  else {})})
    return out


def _operation(op: Operation, schemas: _Schemas, config: Config) -> dict:
    out: dict = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    if parameters := _parameters(op):
        out["parameters"] = parameters
    if op.body is not None:
        media: dict = {"schema": schemas.of(op.body)}
        if op.examples:
            media["examples"] = {name: {"summary": name, "value": value(config) if callable(value) else value}
                                 for name, value in op.examples.items()}
        out["requestBody"] = {"required": True, "content": {"application/json": media}}
    ok: dict = {"description": {101: "Switching Protocols", 204: "Done, no content"}.get(op.status, "OK")}
    if op.response is not None:
        ok["content"] = {op.media_type: {"schema": schemas.of(op.response)}}
    for media_type, model in op.alternatives.items():
        ok.setdefault("content", {})[media_type] = {"schema": schemas.of(model)}
    responses = {str(op.status): ok}
    for status in op.errors:
        error: dict = {"description": STATUS_TEXT.get(status, "Error")}
        if op.error_model is not None:
            error["content"] = {"application/json": {"schema": schemas.of(op.error_model)}}
        if status == 429:
            error["headers"] = {"Retry-After": {"description": "Seconds to wait before submitting again",
                                                "schema": {"type": "integer", "minimum": 1}}}
        responses[str(status)] = error
    out["responses"] = responses
    out["security"] = [{name: []} for name in op.security]  # any one of them; [] for no auth
    return out


def document(app: web.Application, config: Config, server_url: str, description: str = "") -> dict:
    """The OpenAPI document of every documented route the app has."""
    ops = operations(app)
    registries = list(dict.fromkeys(op.owner for op in ops))
    models = ([(op.body, "validation") for op in ops if op.body is not None and not isinstance(op.body, dict)]
              + [(op.response, "serialization") for op in ops if op.response is not None
                 and not isinstance(op.response, dict)]
              + [(m, "serialization") for op in ops for m in op.alternatives.values() if not isinstance(m, dict)]
              + [(op.error_model, "serialization") for op in ops if op.error_model is not None]
              + [(t, "serialization") for d in registries for t in d.schemas])
    schemas = _Schemas(models)
    paths: dict[str, dict] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas, config)
    used = sorted({name for op in ops for name in op.security})
    return {
        "openapi": "3.1.0",
        "info": {"title": "diffbus", "version": _version(), "description": description},
        "servers": [{"url": server_url}],
        "tags": [{"name": d.tag, "description": d.description} for d in registries],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.components.items())),
                       "securitySchemes": {name: SECURITY_SCHEMES[name](config) for name in used}},
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("diffbus")
    except PackageNotFoundError:
        return "0"
