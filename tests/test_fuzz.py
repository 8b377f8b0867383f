"""Property-based fuzzing of the live API from its own /openapi.json: every operation of every dialect
gets bodies generated from its schema, hostile JSON (deep, lone surrogates, huge numbers), garbage
bytes and odd path and query values. No answer may be a 5xx (but the 504 a synchronous route
documents: this stack has no worker), every status must be one the document lists for that
operation, and the TASKS stream must hold a task for each request answered 2xx, none for the rest.

The stack has no worker (nothing runs, so nothing generated can be slow) and synchronous routes give
up after a second. The request count and time are printed (`pytest -s`): bench-style, not asserted."""

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import nats
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas import subjects

from .stack import ALICE, SDWM_SECRET, Stack, wait_until

EXAMPLES = 1500  # requests in all: under a minute on the 2-core machine, under load
CREATES = {("post", p) for p in ("/api/v1/generate", "/api/v1/upscale", "/sdapi/v1/txt2img", "/sdapi/v1/img2img",
                                 "/sdapi/v1/extra-single-image", "/v1/engine/generate/", "/v1/engine/generate",
                                 "/api/Task/submitTxt2ImgTask", "/api/Task/submitImg2ImgTask",
                                 "/api/Task/submitUpscaleTask")}
HEADERS = {"X-API-Key": ALICE, "X-API-SECRET": SDWM_SECRET, "Content-Type": "application/json",
           "Authorization": "Basic " + base64.b64encode(f"x:{ALICE}".encode()).decode()}
SKIPPED = {("get", "/api/v1/tasks/{task_id}/events")}  # a stream that stays open: test_live covers it


def text(max_size: int = 40):
    """Any Unicode, lone surrogates and NULs included."""
    return st.text(st.characters(codec=None, exclude_categories=()), max_size=max_size)


HOSTILE_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text()
    | st.sampled_from([2**63, -(2**63) - 1, 10**30, 0, -1, 1e308]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(12), inner, max_size=4), max_leaves=12)
RAW = st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"a":' * 2000 + b"1" + b"}" * 2000, b"{", b"\xff\xfe\x00",
                       b'{"prompt": NaN}', b'{"width": 1e400}', b'{"prompt": "\\ud800"}', b"", b"null"])


def from_schema(schema: dict, components: dict, depth: int = 0):
    """Values for the subset of JSON Schema /openapi.json uses, mostly valid, sometimes just off."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[1]], components, depth)
    if "enum" in schema or "const" in schema:
        return st.sampled_from(schema.get("enum", [schema.get("const")]))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, components, depth) for s in schema[key]])
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, components, depth) for k in kind])
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(low - 1 if low is not None else None, high + 1 if high is not None else None)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-100, 5000)
    if kind == "string":
        return text()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array" and depth < 3:
        return st.lists(from_schema(schema.get("items", {}), components, depth + 1), max_size=3)
    if kind == "object" and depth < 3:
        properties = {name: from_schema(s, components, depth + 1) for name, s in schema.get("properties", {}).items()}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries({k: v for k, v in properties.items() if k in required},
                                     optional={k: v for k, v in properties.items() if k not in required})
    return HOSTILE_JSON


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory, demo_model):
    """nats-server, the projector and the API: no worker, synchronous routes wait a second."""
    stack = Stack(tmp_path_factory.mktemp("fuzz"), demo_model, api={"sync_timeout_s": 1.0})
    stack.start_nats()
    stack.start("projector")
    stack.start("api")
    try:
        wait_until(lambda: _status(stack.base_url + "/health") is not None, 60, "the API", stack)
        yield stack
        assert not stack.crashed(), stack.logs()
    finally:
        stack.close()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def operations(document: dict) -> list[tuple[str, str, dict]]:
    return sorted((method, path, op) for path, item in document["paths"].items() for method, op in item.items()
                  if (method, path) not in SKIPPED)


def request_strategy(document: dict, method: str, path: str, op: dict):
    """(method, path, url path with query, body bytes | None) for one operation."""
    components = document.get("components", {}).get("schemas", {})
    params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
    values = {p["name"]: st.none() | text() | from_schema(p.get("schema", {"type": "string"}), components).map(
        lambda v: v if isinstance(v, str) else json.dumps(v)) for p in params}
    body = st.none()
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is not None:
        body = st.one_of(from_schema(schema, components).map(lambda v: json.dumps(v).encode()),
                         HOSTILE_JSON.map(lambda v: json.dumps(v).encode()), RAW)

    def build(chosen: dict, data: bytes | None):
        url, query = path, {}
        for p in params:
            value = chosen[p["name"]]
            if p["in"] == "path":
                url = url.replace("{" + p["name"] + "}", urllib.parse.quote((value or "x").encode("utf-8", "surrogatepass"), safe="")
                                  if value is not None else "1")
            elif value is not None:
                query[p["name"]] = value.encode("utf-8", "surrogatepass")
        return method, path, url + ("?" + urllib.parse.urlencode(query) if query else ""), data

    return st.builds(build, st.fixed_dictionaries(values), body)


async def accepted_tasks(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(subjects.TASKS, subjects_filter=subjects.task_event("*", "accepted"))
        return len(info.state.subjects or {})
    finally:
        await nc.close()


def test_fuzzed_requests_get_documented_statuses_and_no_5xx(fuzz_stack):
    with urllib.request.urlopen(fuzz_stack.base_url + "/openapi.json", timeout=10) as resp:
        document = json.load(resp)
    ops = {(m, p): op for m, p, op in operations(document)}
    strategy = st.one_of([request_strategy(document, m, p, op) for (m, p), op in ops.items()])
    seen, created, failures = [], [0], []
    before = asyncio.run(accepted_tasks(fuzz_stack.nats_url))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def fuzz(case):
        method, path, url, data = case
        request = urllib.request.Request(fuzz_stack.base_url + url, data=data, method=method.upper(), headers=HEADERS)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # a stream's first bytes are enough
                streamed = resp.headers.get("Content-Type", "").startswith("text/event-stream")
                status, body = resp.status, b"" if streamed else resp.read(300)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read(300)
        seen.append(status)
        documented = ops[(method, path)]["responses"]
        sync_gave_up = status == 504 and "504" in documented
        if status >= 500 and not sync_gave_up or str(status) not in documented and "default" not in documented:
            failures.append(f"{method.upper()} {url[:120]} {(data or b'')[:120]!r} -> {status} {body[:200]!r}")
        if (method, path) in CREATES and (200 <= status < 300 or sync_gave_up):
            created[0] += 1

    started = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - started
    print(f"\nfuzzing: {len(seen)} requests over {len(ops)} operations in {elapsed:.1f} s "
          f"({len(seen) / elapsed:.1f}/s); statuses {sorted(set(seen))}")
    assert not failures, "\n".join(failures[:20])
    assert asyncio.run(accepted_tasks(fuzz_stack.nats_url)) - before == created[0]
