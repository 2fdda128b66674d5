"""The video-generation service: HTTP API, job queue, GPU workers, engine and kernels."""
