"""Stage 2 (rerank): (query, product) pairs -> click / add-to-cart / purchase. Independent of retrieval/."""
from pipeline.core.runtime import configure_environment

configure_environment()

#: Tokens per (query, product) pair. The product text alone is ~30 tokens (p99 44) and the
#: attributes that decide constraints (colour, size, audience) come last, so a shorter limit
#: truncates exactly what the cross-encoder is there to read.
DEFAULT_MAX_LENGTH = 64
