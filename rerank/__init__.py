"""Stage 2 (rerank): (query, product) pairs -> click / add-to-cart / purchase. Independent of retrieval/."""
from pipeline.core.runtime import configure_environment

configure_environment()
