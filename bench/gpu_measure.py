"""What bench/gpu.py measures inside one process: the matmul rate, a pipeline's FLOPs per image,
a plain diffusers loop, peak memory, and the GPU's busy share (nvidia-smi)."""

import shutil
import subprocess
import threading
import time

PROMPT = "a lighthouse at dusk, oil painting"


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops() -> dict:
    """The dense matmul rate this device reaches: bf16 8192³ on CUDA (fp32 1024³ on a CPU), mean of 10
    products after 3 warm-ups. The physical bound every images/s is read against."""
    import torch

    n, dtype, device = (8192, torch.bfloat16, "cuda") if cuda() else (1024, torch.float32, "cpu")
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    seconds = (time.perf_counter() - t) / 10
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": 2 * n**3 / seconds / 1e12}


def denoiser_inputs(net, batch: int, latent: int, text_tokens: int, dtype, device) -> dict:
    """One denoiser call's inputs for `batch` latents of `latent`² (shapes are all that count)."""
    import torch

    c, name = net.config, type(net).__name__

    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    t = torch.full((batch,), 500.0, dtype=dtype, device=device)
    if name == "UNet2DConditionModel":
        kwargs = dict(sample=randn(batch, c.in_channels, latent, latent), timestep=t,
                      encoder_hidden_states=randn(batch, 77, c.cross_attention_dim))
        if c.addition_embed_type == "text_time":  # SDXL: pooled text and the six size/crop ids
            kwargs["added_cond_kwargs"] = {
                "text_embeds": randn(batch, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim),
                "time_ids": randn(batch, 6)}
        return kwargs
    common = dict(timestep=t, encoder_hidden_states=randn(batch, text_tokens, c.joint_attention_dim),
                  pooled_projections=randn(batch, c.pooled_projection_dim))
    if name == "SD3Transformer2DModel":
        return dict(hidden_states=randn(batch, c.in_channels, latent, latent), **common)
    if name == "FluxTransformer2DModel":  # latents packed 2×2 into a sequence
        tokens = (latent // 2) ** 2
        return dict(hidden_states=randn(batch, tokens, c.in_channels), img_ids=randn(tokens, 3),
                    txt_ids=randn(text_tokens, 3), guidance=t if c.guidance_embeds else None, **common)
    raise ValueError(f"no FLOP count for a {name}")


def pipeline_flops(pipe, family, size: int, steps: int) -> dict:
    """FLOPs of one image (torch's FLOP counter; on meta tensors for full-size models): the text encoders
    once, the denoiser `steps` times (a batch of 2 with classifier-free guidance), the VAE decode once."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from services.gpu_worker.speed import denoiser

    net = denoiser(pipe)
    device, dtype = net.device, net.dtype
    cfg = 2 if family.guidance > 1 else 1
    latent = size // (2 ** (len(pipe.vae.config.block_out_channels) - 1))
    text_tokens = 77 if family.t5_tokens == 0 else family.t5_tokens + (77 if family.name == "sd3" else 0)

    def count(fn) -> int:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    encoders = [m for n, m in pipe.components.items() if n.startswith("text_encoder") and m is not None]
    text = sum(count(lambda m=m: m(torch.zeros(cfg, family.t5_tokens if "T5" in type(m).__name__ else 77,
                                               dtype=torch.long, device=device))) for m in encoders)
    step = count(lambda: net(**denoiser_inputs(net, cfg, latent, text_tokens, dtype, device)))
    vae = count(lambda: pipe.vae.decode(torch.randn(1, pipe.vae.config.latent_channels, latent, latent,
                                                    dtype=pipe.vae.dtype, device=device)))
    total = text + steps * step + vae
    return {"per_image_tflop": total / 1e12, "denoiser_step_tflop": step / 1e12, "text_encoders_tflop": text / 1e12,
            "vae_decode_tflop": vae / 1e12, "denoiser_share": steps * step / total}


def generate(pipe, family, size: int, steps: int, n: int, seed: int = 0):
    """One pipeline call of `n` images, the family's guidance, per-image CPU generators."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        return pipe([PROMPT] * n, height=size, width=size, num_inference_steps=steps,
                    guidance_scale=family.guidance,
                    generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]).images


def plain_loop(pipe, family, size: int, steps: int, batch: int, deadline: float, max_images: int) -> dict:
    """images/s of calls of `batch` images, after one warm-up call, as many as fit before `deadline`
    (at most `max_images` images; at least two calls when that many fit in `max_images`)."""
    t = time.perf_counter()
    generate(pipe, family, size, steps, batch)
    sync()
    warmup = time.perf_counter() - t
    done, calls, t = 0, 0, time.perf_counter()
    while done + batch <= max(max_images, batch):
        generate(pipe, family, size, steps, batch, seed=done)
        done, calls = done + batch, calls + 1
        per_call = (time.perf_counter() - t) / calls
        if calls >= 2 and time.monotonic() + per_call > deadline:  # the next call would end past it
            break
    sync()
    wall = time.perf_counter() - t
    return {"batch": batch, "images": done, "wall_s": wall, "images_per_s": done / wall, "warmup_s": warmup}


def peak_memory(pipe, family, size: int, steps: int, batches=(1, 4, 8)) -> dict:
    """torch.cuda.max_memory_allocated over one call of each batch size (GiB; CUDA only)."""
    import torch

    peaks = {}
    for n in batches:
        torch.cuda.reset_peak_memory_stats()
        generate(pipe, family, size, steps, n)
        peaks[f"batch_{n}_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return peaks


class Utilization:
    """nvidia-smi's GPU utilization every 50 ms while running (nothing where nvidia-smi is missing)."""

    def __init__(self):
        self.samples: list[int] = []
        self.proc = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "50"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    @property
    def busy_share(self) -> float | None:
        """Share of samples in which the GPU ran a kernel (nvidia-smi's utilization above 0)."""
        return sum(s > 0 for s in self.samples) / len(self.samples) if self.samples else None
