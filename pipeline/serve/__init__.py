"""`pipeline serve`: two-stage search over HTTP, with a web page.

* :mod:`pipeline.serve.app` — the FastAPI routes and the one error shape
* :mod:`pipeline.serve.state` — the loaded searcher and its atomic hot reload
* :mod:`pipeline.serve.pool` — model calls off the event loop, with a bounded wait queue
* :mod:`pipeline.serve.metrics` — Prometheus metrics
* :mod:`pipeline.serve.settings` — options and request limits
* ``static/`` — the page at ``/`` (plain HTML, CSS and JS: no build step, no CDN)

The searcher is built exactly as `pipeline search` builds it
(:meth:`pipeline.search.TwoStageSearcher.load`), so both answer a query identically.
"""
from __future__ import annotations

from pipeline.serve.settings import Artefacts, ServeSettings, token_from_env

__all__ = ["Artefacts", "ServeSettings", "token_from_env"]
