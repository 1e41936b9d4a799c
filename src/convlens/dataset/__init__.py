"""The dataset view: what each channel responds to across many images, streamed in bounded memory.

``accumulate`` keeps the per-channel rankings, statistics and class means;
``engine`` streams a data source through a model (locally, with checkpoints);
``api`` is the entry point ``Lens.dataset`` and ``convlens dataset`` call.
"""
