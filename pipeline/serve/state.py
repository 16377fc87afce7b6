"""The searcher the service answers with, loaded once and swapped whole on reload.

Hot reload loads the new artefacts *beside* the old ones and replaces one reference: a
request takes :attr:`SearcherSlot.current` once when it starts and uses that object to the
end, so in-flight requests finish on the old models while new ones get the new; the old
searcher is freed when its last request lets go. A reload that fails (a corrupt index, a
mismatched model) leaves the old searcher serving and reports the one-line reason.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import ShoprankError
from pipeline.search import CatalogText, TwoStageSearcher
from pipeline.serve.settings import Artefacts, ServeSettings

log = logging.getLogger("shoprank.serve")

#: Catalog columns the web page shows next to the title, when the catalog has them.
DISPLAY_COLUMNS = ("brand", "category", "price")


class ReloadBusy(ShoprankError):
    """Another reload is still loading."""


class ReloadFailed(ShoprankError):
    """The new artefacts did not load; the old ones are still serving."""


@dataclass(frozen=True)
class Loaded:
    """One complete, ready searcher and what it was loaded from."""

    searcher: TwoStageSearcher
    artefacts: Artefacts
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    def display(self, product_id: str) -> dict[str, Any]:
        """Brand, category and price of a product (the columns its catalog has)."""
        return self.details.get(product_id, {})


def display_details(catalog: CatalogText) -> dict[str, dict[str, Any]]:
    """Display columns by product id, from the searcher's own catalog table (any format the
    searcher read); missing values (None, NaN) are left out rather than sent as null."""
    table = catalog.table()
    wanted = [c for c in DISPLAY_COLUMNS if c in table.column_names]
    if not wanted:
        return {}
    columns = {c: table.column(c).to_pylist() for c in wanted}
    return {pid: {c: columns[c][i] for c in wanted if columns[c][i] is not None and columns[c][i] == columns[c][i]}
            for i, pid in enumerate(catalog.ids)}


def load_searcher(artefacts: Artefacts, settings: ServeSettings) -> Loaded:
    """The searcher `pipeline search` would build for these paths (same backend choice)."""
    started = time.perf_counter()
    searcher = TwoStageSearcher.load(artefacts.index_dir, artefacts.reranker, catalog=artefacts.catalog,
                                     backend=settings.backend, precision=settings.precision,
                                     reranker_required=artefacts.reranker_required, student=artefacts.student,
                                     cascade=artefacts.cascade)
    details = display_details(searcher.catalog)
    return Loaded(searcher, artefacts, details, load_seconds=round(time.perf_counter() - started, 3))


def one_line(exc: BaseException) -> str:
    """An exception as the one line a client sees (expected errors keep their own message)."""
    text = str(exc) if isinstance(exc, ShoprankError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


class SearcherSlot:
    """Holds the current :class:`Loaded` (None until the first load succeeds)."""

    def __init__(self, settings: ServeSettings,
                 loader: Callable[[Artefacts, ServeSettings], Loaded] = load_searcher) -> None:
        self.settings = settings
        self._loader = loader
        self._current: Loaded | None = None
        self._reloading = threading.Lock()
        self.ready = threading.Event()
        self.last_error: str | None = None
        #: Called when the first load fails: `pipeline serve` stops then (a service that can
        #: never answer should say so and exit), while a test or an embedding app may keep
        #: running and fix it with a reload.
        self.on_initial_failure: Callable[[], None] | None = None

    @property
    def current(self) -> Loaded | None:
        """The searcher new requests use (read once per request)."""
        return self._current

    def load_initial(self) -> None:
        """First load, from the settings' paths; a failure is kept for /readyz and the log."""
        try:
            self._current = self._loader(self.settings.artefacts, self.settings)
            self.ready.set()
            log.info("models loaded in %.1f s: %s", self._current.load_seconds,
                     self._current.searcher.manifest_ids())
        except Exception as exc:  # noqa: BLE001  (reported on /readyz; a reload can still fix it)
            self.last_error = one_line(exc)
            log.error("loading failed: %s", self.last_error)
            if self.on_initial_failure is not None:
                self.on_initial_failure()

    def reload(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load the artefacts beside the current ones, then swap; returns old and new ids.

        Raises :class:`ReloadBusy` while another reload runs and :class:`ReloadFailed` when
        the new artefacts do not load (the current searcher keeps serving).
        """
        if not self._reloading.acquire(blocking=False):
            raise ReloadBusy("a reload is already running; try again when it has finished")
        try:
            base = self._current.artefacts if self._current is not None else self.settings.artefacts
            target = base.with_overrides(overrides or {})
            previous = self._current.searcher.manifest_ids() if self._current is not None else None
            try:
                loaded = self._loader(target, self.settings)
            except Exception as exc:  # noqa: BLE001  (any failure must leave the old searcher serving)
                self.last_error = one_line(exc)
                log.error("reload failed, still serving %s: %s", previous, self.last_error)
                raise ReloadFailed(f"reload failed, still serving the previous models: {self.last_error}") from None
            self._current = loaded  # the swap: one reference assignment
            self.ready.set()
            self.last_error = None
            log.info("reloaded in %.1f s: %s", loaded.load_seconds, loaded.searcher.manifest_ids())
            return {"reloaded": True, "models": loaded.searcher.manifest_ids(), "previous": previous,
                    "artefacts": target.describe(), "seconds": loaded.load_seconds}
        finally:
            self._reloading.release()
