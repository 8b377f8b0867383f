"""Input images given as http(s) URLs (FooocusAPI reads them): fetched by the API under the same address
rules as webhook targets (no loopback, private or link-local address unless notifier.allowed_networks
lets it, checked on the addresses actually connected to), within a time and a size limit. Any failure
is a 422 naming the field."""

import asyncio
import base64
from urllib.parse import urljoin

import aiohttp

from services import egress

from .errors import invalid

MAX_REDIRECTS = 3


def is_url(value: str | None) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


async def _get(session: aiohttp.ClientSession, url: str, allowed, max_bytes: int) -> tuple[bytes, str]:
    for _ in range(MAX_REDIRECTS + 1):
        await egress.check_url(url, allowed)  # literal addresses never reach the resolver
        async with session.get(url, allow_redirects=False) as resp:
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                continue
            if resp.status != 200:
                raise ValueError(f"the server answered {resp.status}")
            if (resp.content_length or 0) > max_bytes:
                raise ValueError(f"larger than {max_bytes} bytes")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise ValueError(f"larger than {max_bytes} bytes")
            return bytes(data), resp.content_type
    raise ValueError(f"more than {MAX_REDIRECTS} redirects")


async def image_url(url: str, field: str | list, config) -> str:
    """The image at `url` as a data URI (the decoder then checks that it is an image)."""
    loc = field if isinstance(field, list) else [field]
    allowed = egress.networks(config.notifier.allowed_networks)
    timeout = config.fooocus.image_fetch_timeout_s
    connector = aiohttp.TCPConnector(resolver=egress.GuardedResolver(allowed), force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            data, content_type = await asyncio.wait_for(
                _get(session, url, allowed, config.limits.max_init_image_bytes), timeout)
    except egress.BlockedTarget as e:
        raise invalid(loc, f"image URL refused: {e}") from None
    except (asyncio.TimeoutError, TimeoutError):
        raise invalid(loc, f"image URL did not answer within {timeout}s") from None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        raise invalid(loc, f"image URL could not be fetched: {e}") from None
    kind = content_type if content_type.startswith("image/") else "image/png"
    return f"data:{kind};base64," + base64.b64encode(data).decode()
