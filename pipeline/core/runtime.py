"""Process-wide runtime settings, in one place.

Why this module exists:
* Hugging Face libraries try the network unless told they are offline, and stall here
  (no model hub). The variables must be set *before* they are imported.
* torch and faiss each bring an OpenMP runtime; depending on import order they can crash.
  Every import of faiss in this project goes through :func:`import_faiss`, which always
  loads torch first when torch is installed, so there is exactly one order.

Stages (retrieval/, rerank/) may import this leaf module; it imports nothing heavy itself.
"""
from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from types import ModuleType
from typing import Any

#: The one default seed of every command and library function (data, sampling, training).
DEFAULT_SEED: int = 13

_OFFLINE_VARS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "KMP_DUPLICATE_LIB_OK": "TRUE",
    # OpenMP threads that wait for work sleep instead of spinning. With spinning, a training
    # process with one thread per core collapses when another job holds a core (its threads
    # burn their time slices waiting for the descheduled one); sleeping costs a few percent
    # on an idle machine (benchmarks/train_threads.py).
    "OMP_WAIT_POLICY": "PASSIVE",
}


def configure_environment() -> None:
    """Set offline / threading environment defaults (never overriding the user's)."""
    for key, value in _OFFLINE_VARS.items():
        os.environ.setdefault(key, value)


#: Environment variable that fixes the number of threads the trainers use.
THREADS_ENV = "SHOPRANK_THREADS"


def available_cpus() -> int:
    """CPUs this process can actually run on: its affinity mask, capped by a cgroup v2 CPU
    quota. Why not ``os.cpu_count()``: in a container it reports the host's cores, and a
    thread pool sized to them oversubscribes the few the container may use."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def training_threads() -> int:
    """Intra-op threads for training: ``$SHOPRANK_THREADS`` when set, else :func:`available_cpus`.

    Set deliberately rather than left to torch, so a small or shared machine runs one thread
    per usable core; ``benchmarks/train_threads.py`` measures the choice next to one thread,
    on a quiet and on a busy machine.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            from pipeline.core.errors import DataError

            raise DataError(f"{THREADS_ENV} must be a positive integer, got {raw!r}")
        return value
    return available_cpus()


def configure_training_threads() -> int:
    """Apply :func:`training_threads` to torch; return the count (recorded in reports)."""
    torch = import_torch()
    threads = training_threads()
    torch.set_num_threads(threads)
    return threads


def import_torch() -> ModuleType:
    """Import torch (always before faiss; see module docstring)."""
    configure_environment()
    import torch

    return torch


def import_faiss(with_torch: bool = True) -> ModuleType:
    """Import faiss in the project's one import order: torch first (if wanted and installed).

    ``with_torch=False`` is for the torch-free cold search path, where torch is never loaded.
    Once faiss is loaded the order is settled, so later calls just return it.
    """
    import sys

    if "faiss" in sys.modules:
        return sys.modules["faiss"]
    configure_environment()
    if with_torch:
        try:
            import torch  # noqa: F401  (loaded first on purpose: OpenMP init order)
        except ImportError:  # pragma: no cover - torch is a hard dependency
            pass
    import faiss

    return faiss


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (if loaded) so runs are reproducible."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    import numpy as np

    np.random.seed(seed)
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports / weight-loading bars (e.g. the unused pooler,
    which we drop on purpose); real errors still raise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def trainer_progress(trainer: Any, enabled: bool) -> None:
    """Give a Hugging Face ``Trainer`` a progress bar and per-log lines on stderr, or neither.

    Why: the Trainer's own choices both print its log dicts to stdout (``PrinterCallback`` when
    tqdm is disabled; ``ProgressCallback`` through ``tqdm.write``, which defaults to stdout), and
    stdout belongs to the caller's result. Call it right after constructing the trainer.
    """
    import sys

    from transformers import PrinterCallback, ProgressCallback

    class StderrProgressCallback(ProgressCallback):
        """ProgressCallback (its bar is on stderr already) whose log lines go to stderr too."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            with contextlib.redirect_stdout(sys.stderr):
                super().on_log(args, state, control, logs=logs, **kwargs)

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if enabled:
        trainer.add_callback(StderrProgressCallback())
