"""diffbus command line: `up` for one machine, one command per service for a fleet."""

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from ..config import load
from ..observability import metrics, telemetry
from . import errors

SERVICE_COMMANDS = ("up", "api", "gpu-worker", "upscaler", "projector", "notifier")


def _quiet_libraries() -> None:
    # Models load from local folders only; no download progress bars in service logs.
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                        "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                        "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(name, value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffbus", description="Stable Diffusion jobs over NATS JetStream")
    commands = p.add_subparsers(dest="command", required=True)
    for name in SERVICE_COMMANDS:
        c = commands.add_parser(name, help="run every service" if name == "up" else f"run the {name} service")
        c.add_argument("--config", help="config.yaml (default: built-in defaults and DIFFBUS_* variables)")
        c.add_argument("--nats", help="NATS URL (or several, comma-separated), overriding nats.url and nats.servers")
        if name == "projector":
            c.add_argument("--rebuild", action="store_true",
                           help="delete the task database and replay the TASKS stream into a fresh one")
    generate = commands.add_parser("generate", help="generate images through a running diffbus API")
    generate.add_argument("--config", help="config.yaml (for client.url, client.api_key)")
    from .client import add_arguments

    add_arguments(generate)
    demo = commands.add_parser("demo-model", help="build the tiny random-weight demo model into a folder")
    demo.add_argument("path")
    demo.add_argument("--seed", type=int, default=0, help="another seed, another model")
    demo.add_argument("--family", default="sd1", choices=("sd1", "sdxl", "sd3", "flux", "flux-schnell"),
                      help="the model family (default sd1; flux-schnell: Flux without distilled guidance)")
    demo.add_argument("--inpainting", action="store_true", help="an inpainting model (a 9-channel UNet)")
    demo.add_argument("--single-file", action="store_true",
                      help="write PATH as one original-layout .safetensors checkpoint (its diffusers folder, "
                           "for `config:`, is kept beside it: PATH without .safetensors)")
    checkpoint = commands.add_parser("demo-checkpoint", help="write a demo model folder as one .safetensors checkpoint")
    checkpoint.add_argument("model")
    checkpoint.add_argument("path")
    demo_loras = commands.add_parser("demo-loras", help="build random LoRAs for a demo model into a folder")
    demo_loras.add_argument("model")
    demo_loras.add_argument("path")
    demo_upscalers = commands.add_parser("demo-upscalers", help="build tiny random-weight upscaler files into a folder")
    demo_upscalers.add_argument("path")
    return p


def demo_model(args) -> int:
    from ..gpu_worker import demo_model

    path = Path(args.path)
    folder = demo_model.ensure(path.with_suffix("") if args.single_file else path, args.seed, args.family,
                               args.inpainting)
    if args.single_file:
        from ..gpu_worker import checkpoint

        folder = checkpoint.write(folder, path.with_suffix(".safetensors"))
    print(folder)
    return 0


def demo_checkpoint(args) -> int:
    from ..gpu_worker import checkpoint

    print(checkpoint.write(args.model, args.path))
    return 0


def demo_loras(args) -> int:
    from ..gpu_worker import demo_families

    print("\n".join(map(str, demo_families.build_loras(Path(args.model), Path(args.path)))))
    return 0


def demo_upscalers(args) -> int:
    from ..upscaler import demo_models

    print("\n".join(map(str, demo_models.build(args.path))))
    return 0


def service_main(command: str):
    """The `main(config, **options)` of a service package, imported when it runs."""
    import importlib

    module = {"gpu-worker": "gpu_worker"}.get(command, command)
    return importlib.import_module(f"..{module}", __package__).main


def run_configured(args) -> int:
    """Commands that need the config: the client, `up`, and one service."""
    nats_url = getattr(args, "nats", None)
    config = load(args.config, **({"nats": nats_override(nats_url)} if nats_url else {}))
    if args.command == "generate":
        from . import client

        return client.main(args, config)
    if args.command == "up":
        from .up import up

        return up(config)
    options = {"rebuild": args.rebuild} if args.command == "projector" else {}
    with contextlib.ExitStack() as stack:  # closed in reverse: the metrics server, then the traces flushed
        telemetry.setup(args.command)
        stack.callback(telemetry.shutdown)
        if args.command != "api" and (server := metrics.serve(config)) is not None:  # the API has /metrics
            stack.callback(server.shutdown)
        service_main(args.command)(config, **options)
    return 0


TOOLS = {"demo-model": demo_model, "demo-checkpoint": demo_checkpoint, "demo-loras": demo_loras,
         "demo-upscalers": demo_upscalers}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        with errors.exit_codes(args.command):
            return TOOLS.get(args.command, run_configured)(args)
    except errors.Exit as e:
        return e.code


def nats_override(value: str) -> dict:
    """--nats URL, or several comma-separated (a cluster)."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    return {"url": urls[0], "servers": urls if len(urls) > 1 else []}


if __name__ == "__main__":
    sys.exit(main())
