"""The runtime both workers (gpu_worker, upscaler) share: pulling, heartbeats, cancels, settling, progress."""
