"""Dynamic batching: compatible txt2img jobs waiting behind the first one join it in one pipeline
call, up to `worker.batching.max_images` images; jobs fetched meanwhile that do not fit run next."""

from schemas.codec import decode
from schemas.jobs import Job, batch_key
from services.config import BatchingConfig


def enabled(settings: BatchingConfig, device: str) -> bool:
    """On with CUDA and off elsewhere, unless the config says."""
    return device.startswith("cuda") if settings.enabled is None else settings.enabled


def _job(msg) -> Job | None:
    try:
        return decode(msg.data, Job)
    except Exception:  # noqa: BLE001 - the settler deals with an unreadable job
        return None


def split(first: Job, others: list, max_images: int) -> tuple[list, list]:
    """(the messages that join `first`'s batch, the rest), in order."""
    key, images = batch_key(first), first.spec.num_images
    joining, rest = [], []
    for msg in others:
        job = _job(msg)
        if job is not None and batch_key(job) == key and images + job.spec.num_images <= max_images:
            joining.append(msg)
            images += job.spec.num_images
        else:
            rest.append(msg)
    return joining, rest


async def gather(queues, settings: BatchingConfig, msg) -> list:
    """`msg` and the jobs that join it; others fetched meanwhile are held to run next."""
    first = _job(msg)
    if first is None or batch_key(first) is None or first.spec.num_images >= settings.max_images:
        return [msg]
    more = await queues.more_from(msg, settings.max_images - first.spec.num_images,
                                  max(settings.max_wait_ms, 1) / 1000)
    joining, rest = split(first, more, settings.max_images)
    for other in rest:
        queues.hold(other)
    return [msg, *joining]
