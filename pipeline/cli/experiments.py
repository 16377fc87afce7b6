"""Loading experiment code that lives in the source checkout's ``benchmarks/``, not in the
installed product.

Why: experiments such as compare-rerankers carry acceptance checks on the sample world and
train many variants; they are not part of what a shop installs to serve search, so they sit
next to the benchmarks. The CLI still offers them as commands for people working from a
checkout, and says plainly when there is none.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from pipeline.core.errors import DataError

#: benchmarks/ of the checkout this package was installed from (an editable install).
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def load_experiment(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as module ``benchmarks.<name>`` (once per process)."""
    module_name = f"benchmarks.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = BENCHMARKS_DIR / f"{name}.py"
    if not path.is_file():
        raise DataError(f"{name} is an experiment that runs from a source checkout; {path} not found")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


__all__ = ["load_experiment", "BENCHMARKS_DIR"]
