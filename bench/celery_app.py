"""The Celery baseline of bench/control_plane.py: diffbus's own Lanczos upscale as a Celery task over
Redis (broker and result backend). The worker is started by the benchmark with BENCH_REDIS_URL set."""

import base64
import io
import os

from celery import Celery
from PIL import Image

from schemas.jobs import OutputFormat
from services import imaging
from services.upscaler.upscale import upscale as upscale_image

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("diffbus_bench", broker=url, backend=url)
# Defaults otherwise (JSON, prefork with one process per core, prefetch 4), except that every client
# thread gets a broker connection instead of queueing for one of 10.
app.conf.broker_pool_limit = None
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.upscale")  # one name, however the module is imported
def upscale(image_b64: str, width: int, height: int) -> str:
    """What the upscaler service does for a Lanczos job: decode, resize, encode as PNG."""
    image = Image.open(io.BytesIO(base64.b64decode(image_b64)))
    out = upscale_image(image, (width, height), "Lanczos", None, None)
    return base64.b64encode(imaging.encode(out, OutputFormat.PNG)).decode()
