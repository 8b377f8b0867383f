"""Replies encoded from the Structs their routes document, so what is served is what is described."""

import msgspec
from aiohttp import web


def json_reply(reply: msgspec.Struct | list | dict | None, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(reply), status=status, content_type="application/json")
