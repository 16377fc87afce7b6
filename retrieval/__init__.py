"""Stage 1 (recall): text -> vectors -> candidates. Independent of rerank/."""
from pipeline.core.runtime import configure_environment

configure_environment()
