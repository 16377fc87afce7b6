"""Resumable steps for `pipeline fit`: which step is already done, and with which inputs.

A run directory holds a small state file (``fit.json``) with one record per finished step:
the fingerprint of everything the step read (data, budget, seed, the ids of the artefacts
it was built on), the id of what it wrote, its seconds and a short JSON summary. On a re-run
a step is skipped when its recorded input fingerprint equals the current one **and** its
output is still the one it wrote (same manifest id, or same file checksum). Every artefact
gets a fresh manifest id when it is rebuilt, and downstream steps fingerprint those ids, so
redoing one step redoes everything built on it. A step that crashed has no record and is
redone; its half-work never replaced the previous artefact (each step writes atomically).

A record also names the shoprank version that wrote it, and a step recorded by another
version is redone: the fingerprint describes what a step read, not the code that read it,
and an upgrade may change what the same inputs produce (a model format, a default).
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.artifacts import MANIFEST, atomic_write_json, library_versions, sha256_file, sha256_text

STATE_FILE = "fit.json"
STATE_VERSION = 1


def code_version() -> str:
    """The installed shoprank version (``unknown`` when it is run from a tree that was never
    installed), which a step's record must match to be reused."""
    return library_versions().get("shoprank", "unknown")


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """Order-independent hash of a JSON-able description of a step's inputs."""
    return sha256_text(json.dumps(inputs, sort_keys=True, default=str))


def output_id(path: Path) -> str | None:
    """What identifies a step's output: an artefact directory's manifest id, a file's sha256,
    None when there is nothing (complete) there."""
    if path.is_file():
        return sha256_file(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = manifest.get("id") if isinstance(manifest, dict) else None
    return str(value) if value else None


class FitSteps:
    """Runs named steps in order, skipping those whose record in the state file still holds.

    ``resume=False`` redoes every step (the records are still written, so a later resumed
    run can build on them). ``say`` receives progress lines. ``code`` is the version the
    records are written with and must match (:func:`code_version` unless given).
    """

    def __init__(self, root: Path, *, resume: bool = True, say: Callable[[str], None] | None = None,
                 code: str | None = None) -> None:
        self.path = root / STATE_FILE
        self.resume = resume
        self.say = say or (lambda message: sys.stderr.write(message + "\n"))
        self.code = code or code_version()
        self.records: dict[str, dict[str, Any]] = self._load() if resume else {}
        self.report: list[dict[str, Any]] = []

    def _load(self) -> dict[str, dict[str, Any]]:
        """Records of the last run; an unreadable or foreign file means nothing is known to be
        done, so everything is redone rather than trusted."""
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return {}
        steps = state.get("steps")
        return dict(steps) if isinstance(steps, dict) else {}

    def is_current(self, name: str, inputs: str, output: Path) -> bool:
        """Whether ``name`` finished with these inputs, by this shoprank version, and its output
        is still what it wrote."""
        record = self.records.get(name)
        if not self.resume or not isinstance(record, dict) or record.get("inputs") != inputs:
            return False
        if record.get("shoprank") != self.code:
            done_by = f"shoprank {record['shoprank']}" if record.get("shoprank") else "an unrecorded shoprank version"
            self.say(f"{name}: done by {done_by}, now {self.code}: redone")
            return False
        found = output_id(output)
        return found is not None and found == record.get("output")

    def run(self, name: str, inputs: Mapping[str, Any], output: Path,
            work: Callable[[], Any]) -> Any:
        """Run ``work`` (which writes ``output`` and returns a JSON-able summary) unless the
        step is current; either way return the step's summary."""
        key = fingerprint(inputs)
        if self.is_current(name, key, output):
            self.say(f"{name}: up to date, skipped")
            self.report.append({"step": name, "status": "skipped", "seconds": 0.0})
            return self.records[name].get("summary")
        self.say(f"{name} ...")
        started = time.perf_counter()
        summary = work()
        seconds = round(time.perf_counter() - started, 1)
        self.say(f"{name} done in {seconds:.1f} s")
        self.records[name] = {"inputs": key, "output": output_id(output), "shoprank": self.code,
                              "seconds": seconds, "summary": summary}
        atomic_write_json(self.path, {"version": STATE_VERSION, "steps": self.records})
        self.report.append({"step": name, "status": "done", "seconds": seconds})
        return summary

    def output(self, name: str) -> str | None:
        """The recorded output id of a finished step (what downstream steps fingerprint)."""
        record = self.records.get(name)
        return record.get("output") if isinstance(record, dict) else None

    def timings(self) -> dict[str, float]:
        """Seconds per step of this run, in run order."""
        return {row["step"]: row["seconds"] for row in self.report}


__all__ = ["STATE_FILE", "FitSteps", "code_version", "fingerprint", "output_id"]
