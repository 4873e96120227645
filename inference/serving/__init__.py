"""Serving the local model: the asyncio engine and its scheduler, the runner that owns the model on one
thread, the paged KV cache's blocks, a decoding step captured as CUDA graphs, and how much cache and how fast
a CPU."""
