"""What the API says about itself: /openapi.json against the router and the live server, /docs and
/redoc from installed assets, /asyncapi.json against schemas/subjects.py."""

import asyncio
import base64
import hashlib
import inspect
import json
import os
import re
import sys
from pathlib import Path
from unittest import mock

import jsonschema
import pytest
from openapi_spec_validator import validate

from schemas import subjects
from services.api import apidoc, asyncapi
from services.api.field_comments import comments
from services.api.native import GenerateRequest
from services.api.app import create_app
from services.api.context import ApiContext
from services.config import load

from .stack import ALICE, SDWM_SECRET

SENDS_CREDENTIALS = {
    "ApiKey": lambda: {"X-API-Key": ALICE},
    "HTTPBasic": lambda: {"Authorization": "Basic " + base64.b64encode(f"user:{ALICE}".encode()).decode()},
    "ApiSecret": lambda: {"X-API-SECRET": SDWM_SECRET},
}


async def get_json(client, path: str) -> dict:
    async with client.session.get(client.base_url + path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def app_routes(stack) -> set[tuple[str, str]]:
    """(method, path) of every route the API registers, from an app built like the server's."""
    ctx = ApiContext(config=load(stack.config_path), keyring=mock.MagicMock(), tasks=mock.MagicMock(),
                     workers=mock.MagicMock(), loras=mock.MagicMock())
    return {(method, path) for method, path, _ in apidoc.routes(create_app(ctx))}


def response_schema(doc: dict, method: str, path: str, status: str = "200") -> dict | None:
    content = doc["paths"][path][method.lower()]["responses"][status].get("content", {})
    media = content.get("application/json")
    return None if media is None else {**media["schema"], "components": doc["components"]}


def conforms(doc: dict, method: str, path: str, body, status: str = "200") -> None:
    schema = response_schema(doc, method, path, status)
    if schema is not None:
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


def credentials(operation: dict) -> dict:
    schemes = [name for requirement in operation["security"] for name in requirement]
    usable = [s for s in schemes if s in SENDS_CREDENTIALS]
    assert usable or not schemes, f"the test knows no way to send {schemes}"
    return SENDS_CREDENTIALS[usable[0]]() if usable else {}


async def test_openapi_json_is_valid_openapi_3_1(client):
    doc = await get_json(client, "/openapi.json")
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    assert doc["servers"] == [{"url": client.base_url}]
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": doc["components"]["securitySchemes"]["ApiKey"]["description"]}


async def test_every_route_of_the_app_is_in_openapi_json(client, stack):
    doc = await get_json(client, "/openapi.json")
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    missing = app_routes(stack) - documented
    assert not missing, f"routes with no OpenAPI declaration (add DOCS.route(...) beside the handler): {missing}"
    assert documented <= app_routes(stack)


SUBMIT_ROUTES = ["/api/v1/generate", "/api/v1/upscale", "/sdapi/v1/txt2img", "/sdapi/v1/img2img",
                 "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images", "/v1/engine/generate/",
                 "/v1/engine/generate", "/api/Task/submitTxt2ImgTask", "/api/Task/submitImg2ImgTask",
                 "/api/Task/submitUpscaleTask"]


async def test_every_submit_route_declares_429_with_retry_after(client):
    doc = await get_json(client, "/openapi.json")
    for path in SUBMIT_ROUTES:
        refused = doc["paths"][path]["post"]["responses"].get("429")
        assert refused is not None, f"{path} does not declare 429 (a key's quota reached)"
        assert refused["headers"]["Retry-After"]["schema"]["type"] == "integer", path
    assert "429" not in doc["paths"]["/api/v1/tasks"]["get"]["responses"]  # listing queues nothing


async def test_the_generate_request_schema_is_the_model_the_handler_validates_with(client):
    doc = await get_json(client, "/openapi.json")
    generate = doc["paths"]["/api/v1/generate"]["post"]
    assert generate["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NativeGenerateRequest"}  # FooocusAPI has a GenerateRequest too
    fields = doc["components"]["schemas"]["NativeGenerateRequest"]
    assert fields["title"] == "GenerateRequest" and fields["required"] == ["prompt"]
    assert fields["properties"]["num_images"]["maximum"] == 10
    assert fields["properties"]["init_image"]["description"] == "data URI; present: img2img"  # its source comment
    assert set(generate["responses"]) >= {"200", "401", "422"}
    error = doc["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]["422"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/A1111Error"}
    assert {"ApiKey": []} in doc["paths"]["/sdapi/v1/txt2img"]["post"]["security"]
    assert {"HTTPBasic": []} in doc["paths"]["/sdapi/v1/txt2img"]["post"]["security"]


async def test_every_documented_example_is_accepted_by_the_live_server(client):
    doc = await get_json(client, "/openapi.json")
    sent = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            examples = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            for name, example in examples.get("examples", {}).items():
                async with client.session.request(method, client.base_url + path, json=example["value"],
                                                  headers=credentials(operation)) as resp:
                    is_json = resp.content_type == "application/json"
                    body = await resp.json() if is_json else await resp.read()
                    assert 200 <= resp.status < 300, f"{method} {path} example {name!r}: {resp.status} {body}"
                if is_json:
                    conforms(doc, method, path, body)
                if isinstance(body, dict) and "pending" in (body.get("status"), body.get("task_status")):
                    # accepted: that is all this test asks, so leave the shared worker free
                    await client.session.post(f"{client.base_url}/api/v1/tasks/{body['task_id']}/cancel",
                                              headers=client.headers())
                sent.append((path, name))
    assert {path for path, _ in sent} >= {"/api/v1/generate", "/sdapi/v1/txt2img", "/sdapi/v1/options",
                                          "/v1/engine/generate/", "/api/Task/submitTxt2ImgTask"}
    assert len(sent) >= 15


async def test_replies_have_the_documented_shapes(client):
    doc = await get_json(client, "/openapi.json")
    task, _ = await client.generate({"prompt": "a shape check", "num_inference_steps": 2, "seed": 1})
    done = await (await client.task(task["task_id"])).json()
    conforms(doc, "GET", "/api/v1/tasks/{task_id}", done)
    for path, item in doc["paths"].items():
        operation = item.get("get")
        if operation is None or "{" in path or path in ("/api/v1/ws",):
            continue
        if "application/json" not in json.dumps(operation["responses"]["200"].get("content", {})):
            continue
        async with client.session.get(client.base_url + path, headers=credentials(operation)) as resp:
            assert resp.status == 200, (path, await resp.text())
            conforms(doc, "GET", path, await resp.json())
    async with client.session.get(f"{client.base_url}/api/v1/tasks/nope", headers=client.headers()) as resp:
        assert resp.status == 404
        conforms(doc, "GET", "/api/v1/tasks/{task_id}", await resp.json(), "404")


@pytest.mark.parametrize("page, asset", [("/docs", "static/vendor/swagger-ui/swagger-ui-bundle.js"),
                                         ("/redoc", "static/vendor/redoc/redoc.standalone.js")])
async def test_docs_pages_are_served_with_their_assets_from_this_server(client, page, asset):
    async with client.session.get(client.base_url + page) as resp:
        assert resp.status == 200, "run `make install`: it fetches Swagger UI and ReDoc"
        html = await resp.text()
    assert asset in html and "http" not in html.replace("http-equiv", "")  # nothing from a CDN
    async with client.session.get(f"{client.base_url}/{asset}") as resp:
        assert resp.status == 200
        assert len(await resp.read()) > 100_000


async def test_asyncapi_json_names_every_subject_of_schemas_subjects(client):
    doc = await get_json(client, "/asyncapi.json")
    assert doc["asyncapi"] == "3.0.0"
    text = json.dumps(doc)
    for name, value in asyncapi.constants().items():
        assert json.dumps(value) in text, f"subjects.{name} = {value!r} is not in asyncapi.json"
    addresses = {channel["address"] for channel in doc["channels"].values()}
    documented = {getattr(c.address, "__name__", None) for c in asyncapi.CHANNELS} | set(asyncapi.NOT_CHANNELS)
    for name, fn in inspect.getmembers(subjects, inspect.isfunction):
        if fn.__module__ != subjects.__name__ or name.startswith("_"):
            continue
        assert name in documented, f"subjects.{name} is neither a channel nor in asyncapi.NOT_CHANNELS"
    for channel in asyncapi.CHANNELS:
        assert asyncapi.template(channel.address) in addresses
    assert {"tasks.{task_id}.{event}", "progress.{task_id}", "jobs.generate.{priority}.{model}"} <= addresses


async def test_asyncapi_json_is_a_valid_asyncapi_3_document(client):
    spec = Path(apidoc.__file__).parent / "static" / "vendor" / "asyncapi" / "3.0.0.json"
    assert spec.exists(), "run `make install`: tools/web-assets.sh fetches AsyncAPI's JSON Schema"
    doc = await get_json(client, "/asyncapi.json")
    errors = list(jsonschema.Draft7Validator(json.loads(spec.read_text())).iter_errors(doc))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]


async def test_asyncapi_messages_carry_their_streams_and_schemas(client):
    doc = await get_json(client, "/asyncapi.json")
    channels = {c["address"]: c for c in doc["channels"].values()}
    tasks = channels["tasks.{task_id}.{event}"]
    assert tasks["x-stream"]["name"] == subjects.TASKS and tasks["x-stream"]["retention"] == "limits"
    assert set(tasks["parameters"]["event"]["enum"]) >= {"accepted", "started", "completed", "failed", "cancelled"}
    assert channels["progress.{task_id}"]["x-stream"]["max_msgs_per_subject"] == 1
    assert channels["jobs.upscale.{priority}"]["x-stream"]["retention"] == "workqueue"
    schemas = doc["components"]["schemas"]
    for channel in doc["channels"].values():
        for message in channel["messages"].values():
            ref = message["payload"].get("$ref")
            assert ref is None or ref.split("/")[-1] in schemas
    progress = schemas["Progress"]["properties"]
    assert {"step", "total_steps", "fraction", "eta_s", "preview"} <= set(progress)
    for operation in doc["operations"].values():
        assert operation["channel"]["$ref"].split("/")[-1] in doc["channels"]
    # a real message on the wire matches its documented schema
    accepted = {"event": "accepted", "task_id": "t1", "at": 1.0, "owner": "alice", "spec": {
        "kind": "txt2img", "model": "demo", "prompt": "p", "width": 64, "height": 64, "steps": 2,
        "guidance_scale": 7.5, "seed": 1}}
    jsonschema.validate(accepted, {**tasks["messages"]["accepted"]["payload"], "components": doc["components"]},
                        cls=jsonschema.Draft202012Validator)


def test_subject_templates_come_from_the_subject_functions():
    assert asyncapi.template(subjects.task_event) == "tasks.{task_id}.{event}"
    assert asyncapi.template(subjects.gpu_durable) == "gpu-{model}-{priority}"
    assert asyncapi.template(subjects.TASK_GET) == "query.tasks.get"


def doc_scripts() -> dict[str, str]:
    """The Python examples of docs/subscribing.md, by the file name each one's first line gives."""
    text = (Path(__file__).parent.parent / "docs" / "subscribing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return {re.match(r"# (\S+\.py)", b).group(1): b for b in blocks if re.match(r"# \S+\.py", b)}


async def run_script(code: str, stack, tmp_path, *args: str) -> str:
    path = tmp_path / "script.py"
    path.write_text(code)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(path), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, "NATS_URL": stack.nats_url})
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_subscribing_md_examples_follow_a_task_and_audit_the_stream(client, stack, tmp_path):
    scripts = doc_scripts()
    assert set(scripts) == {"follow.py", "audit.py"}
    task_id = await client.submit({"prompt": "followed", "num_inference_steps": 6, "seed": 3})
    followed = await run_script(scripts["follow.py"], stack, tmp_path, task_id)
    assert "step 6/6: 100%" in followed and "event: accepted" in followed
    assert "event: completed" in followed and "seed 3" in followed
    audit = await run_script(scripts["audit.py"], stack, tmp_path)
    line = next(line for line in audit.splitlines() if line.startswith(task_id))
    owner = "key-" + hashlib.sha256(ALICE.encode()).hexdigest()[:16]  # the key's id: never its name
    assert f" {owner} txt2img demo completed by " in line and "events=accepted,started,completed" in line


def test_field_comments_become_descriptions():
    assert comments(GenerateRequest)["init_image"] == "data URI; present: img2img"
    assert "scheduler" not in comments(GenerateRequest)  # a `# type: ignore` is no description
    assert comments(GenerateRequest)["webhook_events"] == "default: completed, failed, cancelled"  # inherited
