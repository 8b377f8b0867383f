"""`diffbus generate`: submit through the HTTP API, follow the task's SSE stream with a progress bar,
write the images. Ctrl-C cancels the task on the server."""

import asyncio
import base64
import json
import mimetypes
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from ..config import Config


class ClientError(Exception):
    pass


async def sse_events(resp: aiohttp.ClientResponse):
    """(event, data) pairs of a text/event-stream response."""
    event, data = "message", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def request_body(args) -> dict:
    body = {"prompt": args.prompt, "num_images": args.n, "output_format": args.format}
    optional = {"negative_prompt": args.negative, "num_inference_steps": args.steps, "seed": args.seed,
                "width": args.width, "height": args.height, "guidance_scale": args.guidance,
                "scheduler": args.scheduler, "strength": args.strength}
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.init_image:
        path = Path(args.init_image)
        kind = mimetypes.guess_type(path.name)[0] or "image/png"
        body["init_image"] = f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()
    return body


class GenerateCommand:
    def __init__(self, args, config: Config, console: Console):
        self.args = args
        self.url = (args.url or config.client.url).rstrip("/")
        key = args.api_key or config.client.api_key
        if key is None and config.api_key_file.exists():
            key = config.api_key_file.read_text().strip()
        if not key:
            raise ClientError("no API key: pass --api-key or set DIFFBUS_CLIENT__API_KEY")
        self.headers = {config.api.key_header: key}
        self.console = console
        self.task_id: str | None = None

    async def run(self) -> int:
        async with aiohttp.ClientSession(headers=self.headers) as session:
            try:
                return await self._run(session)
            except asyncio.CancelledError:
                if self.task_id:
                    async with session.post(f"{self.url}/api/v1/tasks/{self.task_id}/cancel") as resp:
                        self.console.print(f"cancelled task {self.task_id} ({resp.status})", style="yellow")
                raise

    async def _run(self, session: aiohttp.ClientSession) -> int:
        async with session.post(f"{self.url}/api/v1/generate", json=request_body(self.args)) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise ClientError(f"{resp.status}: {answer.get('detail', answer)}")
        self.task_id = answer["task_id"]
        self.console.print(f"task {self.task_id}", style="dim")
        final = await self._follow(session)
        if final["status"] != "completed":
            raise ClientError(f"task {final['status']}: {final.get('error_message') or ''}".strip())
        out_dir = Path(self.args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        urls = [final["result_url"]] if final["result_url"] else final["result_urls"]
        for i, url in enumerate(urls):
            async with session.get(url) as resp:
                resp.raise_for_status()
                path = out_dir / f"{self.task_id}-{i}{Path(url).suffix}"
                path.write_bytes(await resp.read())
            print(path)  # stdout: the written files, for scripts; the rest goes to stderr
        return 0

    async def _follow(self, session: aiohttp.ClientSession) -> dict:
        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[steps]}"), TextColumn("ETA {task.fields[eta]}"))
        label = f"{self.args.n} image{'s' if self.args.n > 1 else ''}"
        with Progress(*columns, console=self.console, transient=True) as bar:
            row = bar.add_task(f"{label}: queued", total=None, eta="?", steps="")
            async with session.get(f"{self.url}/api/v1/tasks/{self.task_id}/events",
                                   timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as resp:
                if resp.status != 200:
                    raise ClientError(f"{resp.status}: {await resp.text()}")
                async for event, data in sse_events(resp):
                    if event == "progress" and data["status"] == "pending":
                        bar.update(row, description=f"{label}: {data['queue_position']} ahead in queue")
                    elif event == "progress":
                        eta = "?" if data["eta_s"] is None else f"{data['eta_s']:.1f}s"
                        bar.update(row, description=f"{label}: generating", total=data["total_steps"],
                                   completed=data["step"], eta=eta,
                                   steps=f"step {data['step']}/{data['total_steps']}")
                    elif event in ("completed", "failed", "cancelled"):
                        return data
        raise ClientError("the event stream ended before the task did")


def add_arguments(parser) -> None:
    parser.add_argument("prompt")
    parser.add_argument("--negative", help="negative prompt")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("-n", type=int, default=1, help="number of images (1-10)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--scheduler")
    parser.add_argument("--init-image", help="an image file: img2img")
    parser.add_argument("--strength", type=float)
    parser.add_argument("--format", default="png", choices=["png", "jpg"])
    parser.add_argument("-o", "--output", default=".", help="folder for the images")
    parser.add_argument("--url", help="API base URL (default: client.url, DIFFBUS_CLIENT__URL)")
    parser.add_argument("--api-key", help="API key (default: client.api_key, DIFFBUS_CLIENT__API_KEY, data/api-key)")


def main(args, config: Config) -> int:
    console = Console(stderr=True)
    try:
        return asyncio.run(GenerateCommand(args, config, console).run())
    except KeyboardInterrupt:
        return 130
    except (ClientError, aiohttp.ClientError, OSError) as e:
        console.print(f"diffbus generate: {e}", style="red")
        return 1
