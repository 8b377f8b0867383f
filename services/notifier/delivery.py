"""One signed POST (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature)."""

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from services import egress

from .backoff import parse_retry_after


@dataclass
class Attempt:
    status: int | None  # None: no HTTP answer
    latency_ms: float
    error: str | None = None
    retry_after_s: float | None = None
    blocked: bool = False  # the target's address is not allowed: final


async def post(session: aiohttp.ClientSession, signer: Webhook, url: str, webhook_id: str, body: dict,
               allowed: list) -> Attempt:
    payload = json.dumps(body, separators=(",", ":"))
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "diffbus-notifier",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(webhook_id, now, payload),
    }
    started = time.perf_counter()
    try:
        host, _ = egress.split(url)
        if egress.literal_ip(host):  # aiohttp skips the resolver for literal addresses
            egress.check_address(host, allowed)
        async with session.post(url, data=payload.encode(), headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return Attempt(resp.status, _ms(started), None if resp.status < 300 else resp.reason,
                           parse_retry_after(resp.headers.get("Retry-After"), time.time()))
    except egress.BlockedTarget as e:
        return Attempt(None, _ms(started), f"blocked: {e}", blocked=True)
    except aiohttp.ClientConnectorError as e:
        if isinstance(e.os_error, egress.BlockedTarget):
            return Attempt(None, _ms(started), f"blocked: {e.os_error}", blocked=True)
        return Attempt(None, _ms(started), f"connection failed: {e.os_error}")
    except TimeoutError:
        return Attempt(None, _ms(started), "timed out")
    except aiohttp.ClientError as e:
        return Attempt(None, _ms(started), f"{e.__class__.__name__}: {e}")


def _ms(started: float) -> float:
    return round(1000 * (time.perf_counter() - started), 1)
