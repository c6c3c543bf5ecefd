"""OpenMP pools: the thread that loaded a model hands its worker threads back, so the engine
thread's pool keeps spinning between kernel calls instead of sleeping (fastdia.backends.cpu.threads;
the speed itself is measured by benchmarks/omp_pools.py, not here)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="one CPU: OpenMP makes no worker threads to hand back")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_release_pool_ends_the_calling_threads_openmp_workers():
    got = _run("""
        import os, torch
        from fastdia.backends.cpu.threads import release_pool
        torch.set_num_threads(2)
        tasks = lambda: len(os.listdir("/proc/self/task"))
        before = tasks()
        torch.ones(1 << 24).add_(1.0)  # a parallel region: this thread gets a worker
        with_pool = tasks()
        released = release_pool()
        print(before, with_pool, released, tasks())
    """)
    before, with_pool, released, after = got.split()
    assert int(with_pool) > int(before) and released == "True" and int(after) < int(with_pool), got


def test_an_engine_started_here_leaves_no_pool_to_this_thread_and_its_own_when_idle(tmp_path):
    """Engine.start hands back the loading thread's workers; an engine with nothing to do hands
    back its own: only busy engines hold OpenMP threads."""
    got = _run("""
        import os, time, torch, warnings
        warnings.simplefilter("ignore")
        torch.set_num_threads(2)
        from fastdia.serve.engine import Engine, SpeechRequest
        engine = Engine.load("tiny-random", max_batch=2)
        tasks = lambda: len(os.listdir("/proc/self/task"))
        torch.ones(1 << 24).add_(1.0)
        loaded = tasks()
        engine.start()  # one more thread (the engine's), and this thread's worker gone
        started = tasks()
        ticket = engine.submit(SpeechRequest("[S1] Hello there.", voice=None, options={"seed": 1, "max_tokens": 60}))
        pieces = list(ticket)
        time.sleep(0.5)  # the engine goes idle and releases its pool
        idle = tasks()
        engine.close()
        print(loaded, started, idle, len(pieces) > 0)
    """)
    loaded, started, idle, spoke = got.split()
    assert spoke == "True" and int(started) == int(loaded) and int(idle) <= int(started), got


def test_loading_a_model_leaves_no_pool_to_the_loading_thread():
    """A model loaded on one thread and used on another (a web app's worker threads) is stepped
    at full speed: loading hands its OpenMP workers back."""
    got = _run("""
        import os, torch, warnings
        warnings.simplefilter("ignore")
        torch.set_num_threads(2)
        import fastdia
        tasks = lambda: len(os.listdir("/proc/self/task"))
        before = tasks()
        torch.ones(1 << 24).add_(1.0)
        with_pool = tasks()
        fastdia.load("dia2-tiny-random")
        print(before, with_pool, tasks())
    """)
    before, with_pool, after = got.split()
    assert int(with_pool) > int(before) and int(after) < int(with_pool), got
