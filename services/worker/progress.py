"""Step progress for any worker: throttled Progress messages with an ETA, one fraction across a task's
stages, and every few steps a preview (for the gpu worker: the latents through its model family's
linear latent→RGB map, no VAE)."""

import base64
import io
import time
from collections.abc import Callable

from schemas.events import Progress, TaskStatus
from services.config import ProgressConfig

def preview(latents, fmt: str, max_size: int, image_size: tuple[int, int]) -> tuple[str, int, int]:
    """The first image of a (B, 3, h, w) batch of latents mapped to colours in [-1, 1] (each model
    family has its map) as a small base64 picture: (data, width, height)."""
    from PIL import Image

    rgb = latents[0, :3].float().cpu().permute(1, 2, 0)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    img = Image.fromarray(pixels, "RGB")
    width, height = image_size
    scale = min(max_size, max(width, height)) / max(width, height)
    img = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="WEBP" if fmt == "webp" else "JPEG", quality=70)
    return base64.b64encode(buf.getvalue()).decode(), img.width, img.height


class StepReporter:
    """Called from the generation thread at every denoising step; hands throttled Progress messages
    to `publish` (which must be thread-safe)."""

    def __init__(self, task_id: str, total_steps: int, attempt: int, image_size: tuple[int, int],
                 config: ProgressConfig, publish: Callable[[Progress], None],
                 clock: Callable[[], float] = time.monotonic, *, stage: int = 0, stage_name: str | None = None,
                 stages: int = 1, span: tuple[float, float] = (0.0, 1.0)):
        self.stage, self.stage_name, self.stages, self.span = stage, stage_name, stages, span
        self.task_id = task_id
        self.total_steps = total_steps
        self.attempt = attempt
        self.image_size = image_size
        self.config = config
        self.publish = publish
        self.clock = clock
        self.started = clock()
        self.last_sent: float | None = None
        self.last_preview_step = 0

    def step(self, index: int, timesteps: int, latents=None) -> None:
        """The gpu worker's step callback: a latent preview rides along when one is due."""
        self.report(index, timesteps, None if latents is None else lambda: preview(
            latents, self.config.preview_format, self.config.preview_size, self.image_size))

    def report(self, index: int, timesteps: int,
               make_preview: Callable[[], tuple[str, int, int]] | None = None) -> None:
        """`index` of `timesteps` callbacks has ended (some schedulers call twice per step)."""
        step = min(self.total_steps, -(-(index + 1) * self.total_steps // timesteps))
        every = self.config.preview_every
        preview_due = bool(every) and make_preview is not None and step - self.last_preview_step >= every
        now = self.clock()
        if self.last_sent is not None and now - self.last_sent < self.config.min_interval_s:
            return  # a due preview rides on the next message that is sent
        self.last_sent = now
        eta = (now - self.started) / step * (self.total_steps - step) if step else None
        start, end = self.span
        msg = Progress(task_id=self.task_id, at=time.time(), status=TaskStatus.PROCESSING, step=step,
                       total_steps=self.total_steps, fraction=start + (end - start) * step / self.total_steps,
                       eta_s=eta, attempt=self.attempt, stage=self.stage, stage_name=self.stage_name,
                       stages=self.stages)
        if preview_due:
            self.last_preview_step = step
            msg.preview, msg.preview_width, msg.preview_height = make_preview()
            msg.preview_format = self.config.preview_format
        self.publish(msg)
