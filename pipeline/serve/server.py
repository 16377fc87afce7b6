"""Run the service on uvicorn (what `pipeline serve` calls)."""
from __future__ import annotations

import logging

from pipeline.serve.settings import ServeSettings


def run_server(settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until interrupted: one process, the models loaded once, ``settings.workers``
    model threads. More throughput = more replicas behind a proxy (README, Deployment)."""
    import uvicorn

    from pipeline.core.errors import ShoprankError
    from pipeline.serve.app import create_app
    from pipeline.serve.state import SearcherSlot

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader narrates which build it picked
    slot = SearcherSlot(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, slot), host=settings.host, port=settings.port,
                                           log_level=log_level, timeout_graceful_shutdown=10))
    slot.on_initial_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if slot.current is None and slot.last_error is not None:
        raise ShoprankError(f"models failed to load: {slot.last_error}")
