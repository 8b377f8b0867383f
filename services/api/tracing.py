"""A server span for every HTTP request, continuing the client's trace when it sends `traceparent`."""

from aiohttp import web
from opentelemetry.trace import SpanKind

from services.observability import telemetry


@web.middleware
async def tracing_middleware(request: web.Request, handler):
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    with telemetry.tracer().start_as_current_span(
            f"{request.method} {route}", context=telemetry.extract(request.headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route}) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        return response
