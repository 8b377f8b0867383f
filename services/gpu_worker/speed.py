"""The settings that decide GPU speed (config `worker.compile`, `channels_last`, `fuse_qkv`, `attention`,
`vae_decode`), applied to a pipeline once, when it loads. bench/gpu.py measures each on and off."""

import logging
import warnings

from services.config import WorkerConfig

log = logging.getLogger("diffbus.gpu_worker")


def denoiser(pipe):
    """The pipeline's denoising network: the UNet (SD 1.x, SDXL) or the transformer (SD3, Flux)."""
    return getattr(pipe, "unet", None) or pipe.transformer


def apply(pipe, settings: WorkerConfig) -> list[str]:
    """Apply the speed settings to a loaded pipeline (on its device); the names of those applied."""
    import torch

    net, vae, applied = denoiser(pipe), getattr(pipe, "vae", None), []
    if settings.channels_last:
        for module in (net, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if settings.attention == "classic":  # config refuses it with fuse_qkv (fused projections take SDPA)
        _classic_attention(net)
        applied.append("classic_attention")
    if settings.fuse_qkv:
        net.fuse_qkv_projections()
        if hasattr(vae, "fuse_qkv_projections"):
            vae.fuse_qkv_projections()
        applied.append("fuse_qkv")
    if settings.vae_decode == "per_image" and vae is not None:
        vae.enable_slicing()
        applied.append("vae_per_image")
    if settings.compile:
        with warnings.catch_warnings():  # importing torch._dynamo warns about torch's own jit.script_method
            warnings.simplefilter("ignore", DeprecationWarning)
            net.compile()  # in place: the module keeps its class, so diffusers' checks still pass
        applied.append("compile")
    if applied:
        log.info("speed settings: %s", ", ".join(applied))
    return applied


def _classic_attention(net) -> None:
    """diffusers' attention before PyTorch's fused SDPA: explicit matmul, softmax, matmul."""
    if hasattr(net, "set_default_attn_processor"):
        net.set_default_attn_processor()  # UNets: AttnProcessor
    else:  # transformers (SD3, Flux) go through the attention dispatcher: SDPA's math kernel
        net.set_attention_backend("_native_math")
