"""What one running service is configured with, and the request limits it enforces.

Kept apart from the app so the CLI, the tests and the load benchmark build the same object.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import DEFAULT_INDEX_DIR, DEFAULT_PRECISION, DEFAULT_RERANKER_DIR

#: Results per query a client may ask for: a results page, not a catalog dump.
MAX_K = 100
#: Candidates reranked per query: reranking cost grows linearly with them, so one request
#: cannot occupy a model thread for long.
MAX_CANDIDATES = 500
#: Queries in one POST /search, and products in one POST /score.
MAX_BATCH_QUERIES = 32
MAX_SCORE_PRODUCTS = 200


@dataclass(frozen=True)
class Artefacts:
    """Where the searcher is loaded from (what POST /admin/reload may point elsewhere)."""

    index_dir: Path = Path(DEFAULT_INDEX_DIR)
    reranker: Path | None = Path(DEFAULT_RERANKER_DIR)
    catalog: Path | None = None
    #: Whether the reranker path was named by the user (then it must exist), as in `pipeline search`.
    reranker_required: bool = False
    #: A distilled student and the ``--rerank-cascade`` spec that uses it (both or neither;
    #: :class:`pipeline.search.CascadeSpec`). Kept with the paths because a cascade is only
    #: meaningful for the pair of models it was chosen for.
    student: Path | None = None
    cascade: str | None = None

    def __post_init__(self) -> None:
        from pipeline.search import parse_cascade

        parse_cascade(self.cascade)  # a bad spec is a one-line error before anything loads

    def with_overrides(self, overrides: dict[str, Any]) -> Artefacts:
        """A copy with the given paths replaced (a reranker named in a reload must exist)."""
        changes: dict[str, Any] = {}
        for key in ("index_dir", "reranker", "catalog", "student"):
            if overrides.get(key):
                changes[key] = Path(str(overrides[key]))
        if "reranker" in changes:
            changes["reranker_required"] = True
        return replace(self, **changes)

    def describe(self) -> dict[str, str | None]:
        return {"index_dir": str(self.index_dir), "reranker": None if self.reranker is None else str(self.reranker),
                "catalog": None if self.catalog is None else str(self.catalog),
                **({"student": str(self.student), "cascade": self.cascade} if self.student is not None else {})}


@dataclass(frozen=True)
class ServeSettings:
    """Options of `pipeline serve` (see its --help)."""

    artefacts: Artefacts = field(default_factory=Artefacts)
    backend: str = "auto"
    precision: str = DEFAULT_PRECISION
    host: str = "127.0.0.1"
    port: int = 8000
    #: Model calls that run at once. Each ONNX Runtime call already uses every core, so on a
    #: small machine more threads only interleave; replicas (processes) scale further.
    workers: int = 1
    #: Requests that may wait for a model thread; past ``workers + max_queue`` the service
    #: answers 503 with Retry-After instead of letting latency grow without bound.
    max_queue: int = 16
    #: Bearer token for POST /admin/reload; None disables the admin routes.
    admin_token: str | None = None

    def __post_init__(self) -> None:
        from pipeline.core.errors import ShoprankError
        from pipeline.core.onnx import check_choices

        check_choices(self.backend, self.precision)
        if self.workers < 1 or self.max_queue < 0:
            raise ShoprankError(f"--workers must be >= 1 and --max-queue >= 0 (got {self.workers}, {self.max_queue})")
        if not 0 <= self.port <= 65535:
            raise ShoprankError(f"--port must lie in 0..65535, got {self.port}")
        if self.admin_token is not None and not self.admin_token.strip():
            raise ShoprankError("--admin-token is empty; give a secret or leave the option out to disable /admin")


def token_from_env(value: str | None) -> str | None:
    """``--admin-token`` or, when absent, ``$SHOPRANK_ADMIN_TOKEN`` (a token on the command
    line is visible in the process list; the environment is not)."""
    return value if value is not None else os.environ.get("SHOPRANK_ADMIN_TOKEN") or None
