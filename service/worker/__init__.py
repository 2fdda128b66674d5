"""The GPU worker: one process per device, one model loaded once, one job at a time.

``engines`` builds the engine (the diffusers pipeline, or the no-op engine for benchmarks and
queue tests), ``results`` stores what it makes, ``runner`` takes jobs from the queue and runs
them, ``liveness`` keeps them claimed while they run.
"""
