"""Jobs that share an output: exclusive locks, the directory swap under a race, and what a
killed job leaves behind (issue items 10-12).

The lock, swap and sweep tests are quick and need no model; the ``score-logs`` and
``build-index`` runs use the quick demo's artefacts (slow).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import artifacts
from pipeline.core.artifacts import atomic_directory, claim_output, sweep_stale
from pipeline.core.errors import ShoprankError
from pipeline.core.locks import LockedError, exclusive_lock, lock_path

def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lock_refused_while_holder_lives_and_taken_over_when_it_dies(tmp_path, lock_holder):
    target = tmp_path / "out.parquet"
    holder = lock_holder(target)
    try:
        with pytest.raises(LockedError, match=f"in use by process {holder.pid}"):
            with exclusive_lock(target, "output"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(target).exists()  # a killed holder cannot clean up ...
    with exclusive_lock(target, "output"):  # ... but its lock dies with it
        assert lock_path(target).read_text() == str(os.getpid())
    assert not lock_path(target).exists()


def test_lock_is_reentrant_within_a_process(tmp_path):
    target = tmp_path / "index"
    with exclusive_lock(target):
        with exclusive_lock(target):  # build_index -> build_from_vectors
            pass
        assert lock_path(target).exists()
    assert not lock_path(target).exists()


def test_directory_swap_survives_the_worst_interleaving(tmp_path, monkeypatch):
    """Item 11: a second writer swaps its directory in between our two renames; ours must
    still land, complete, with no ``.old-*`` left (before: OSError 39, Directory not empty)."""
    target = tmp_path / "idx"
    target.mkdir()
    (target / "v").write_text("0")
    real_replace = os.replace
    raced = []

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst) and not raced:
            raced.append(True)
            with atomic_directory(target) as other:
                (other / "v").write_text("B")

    monkeypatch.setattr(artifacts.os, "replace", replace)
    with atomic_directory(target) as mine:
        (mine / "v").write_text("A")
    assert raced and (target / "v").read_text() == "A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_claim_sweeps_dead_writers_leftovers_only(tmp_path):
    """Item 12: temporaries of dead pids (or, without a pid, old ones) go; a live job's stay."""
    target = tmp_path / "reranker"
    target.mkdir()  # else the newest .old-* copy would be put back in its place (recover_directory)
    dead, live = _dead_pid(), os.getppid()
    stale = [f".reranker.tmp-{dead}-1a2b3c4d", f".reranker.old-{dead}-1a2b3c4d",
             f".reranker.scratch-{dead}-1a2b3c4d", ".reranker.tmp-0badc0de"]
    kept = [f".reranker.tmp-{live}-1a2b3c4d", ".reranker.old-5eedf00d", "reranker-notes.txt"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(b"x")
    old = time.time() - 2 * artifacts.STALE_AFTER_S
    os.utime(tmp_path / ".reranker.tmp-0badc0de", (old, old))
    with claim_output(target, "model folder"):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "reranker", ".reranker.lock"])
    assert sweep_stale(target) == []


def test_trainer_scratch_goes_next_to_the_output(tmp_path):
    target = tmp_path / "models" / "retriever"
    with artifacts.scratch_directory(target) as scratch:
        assert scratch.parent == target.parent and scratch.name.startswith(f".retriever.scratch-{os.getpid()}-")
    assert not scratch.exists()


def test_claim_refuses_an_unwritable_place(tmp_path):
    with pytest.raises(ShoprankError, match="cannot create"):
        with claim_output(Path("/proc/shoprank/out"), "index"):
            pass


# ----------------------------------------------------------------------------- real jobs (slow)
def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _query_log(path: Path, n: int) -> None:
    words = ["sofa", "lamp", "desk", "rug", "chair", "boots", "jacket", "pillow", "kettle", "mirror"]
    pq.write_table(pa.table({"query": [f"{words[i % 10]} {words[(i * 7) % 10]} {i}" for i in range(n)]}), path)


def _scores(path: Path) -> pa.Table:
    return pq.read_table(path).replace_schema_metadata(None)


@pytest.mark.slow
def test_two_score_logs_runs_into_one_output(demo_run, tmp_path):
    """Item 10: the second run is refused in one line; the first one's file is complete and
    equals an undisturbed run's (before: the second deleted the first one's parts)."""
    root, _ = demo_run
    log, out, ref = tmp_path / "log.parquet", tmp_path / "out.parquet", tmp_path / "ref.parquet"
    _query_log(log, 40)
    common = ("--index", str(root / "indexes/default"), "--reranker", str(root / "models/reranker"),
              "--batch-size", "4", "--candidates", "20", "--no-progress")
    first = _cli("score-logs", "--input", str(log), "--output", str(out), *common, cwd=tmp_path)
    _wait_for(lambda: lock_path(out).exists(), first)
    second = _cli("score-logs", "--input", str(log), "--output", str(out), *common, cwd=tmp_path)
    _, err = second.communicate(timeout=300)
    assert first.poll() is None, "the first run ended before the second one started; use a bigger log"
    assert second.returncode == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        line for line in err.splitlines() if "is in use by process" in line] != []
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    reference = _cli("score-logs", "--input", str(log), "--output", str(ref), *common, cwd=tmp_path)
    assert reference.wait(timeout=600) == 0
    assert _scores(out).equals(_scores(ref))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.parquet", "out.parquet", "ref.parquet"]


@pytest.mark.slow
def test_killed_jobs_leave_nothing_after_the_next_run(demo_run, tmp_path):
    """Item 12: kill -9 a score-logs and a build-index mid-way; the next run into the same
    place succeeds and no temporaries, parts or locks remain."""
    root, _ = demo_run
    log, out = tmp_path / "log.parquet", tmp_path / "out.parquet"
    _query_log(log, 40)
    args = ("score-logs", "--input", str(log), "--output", str(out), "--index", str(root / "indexes/default"),
            "--reranker", str(root / "models/reranker"), "--batch-size", "4", "--candidates", "20", "--no-progress")
    job = _cli(*args, cwd=tmp_path)
    parts = tmp_path / ".out.parquet.parts"
    _wait_for(lambda: parts.is_dir() and any(parts.glob("part-*")), job)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert lock_path(out).exists()
    rerun = _cli(*args, cwd=tmp_path)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.parquet", "out.parquet"]

    index = tmp_path / "indexes" / "idx"
    build = ("build-index", "--catalog", str(root / "data/sample/catalog.parquet"),
             "--model", str(root / "models/retriever"), "--out", str(index), "--backend", "torch")
    job = _cli(*build, cwd=tmp_path)
    _wait_for(lambda: lock_path(index).exists(), job)
    time.sleep(1.0)  # into the model load / encoding
    job.send_signal(signal.SIGKILL)
    job.wait()
    (index.parent / f".idx.tmp-{job.pid}-deadbeef").mkdir()  # as if it died while writing
    rerun = _cli(*build, cwd=tmp_path)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert sorted(p.name for p in index.parent.iterdir()) == ["idx"]
