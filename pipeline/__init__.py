"""shoprank orchestration: the only package that knows about both stages.

Importing this package is cheap on purpose (no torch, no faiss): `pipeline --help`
must answer in well under a second.
"""
from pipeline.core.runtime import configure_environment

configure_environment()
