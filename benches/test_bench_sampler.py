"""pytest-benchmark suite: native TreeSampler and psutil on the same trees (`make bench`). The floor to compare with
is the C program benches/cfloor.c, timed in its own process by benches/compare.py."""

from __future__ import annotations

import psutil
import pytest

from support import proctree
from compare import psutil_sample

from gridpilot import _native

SIZES = [10, 100, 1000]


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}procs")
def tree(request):
    t = proctree.spawn(proctree.balanced(request.param), timeout=120)
    yield t
    t.cleanup()


def test_native(benchmark, tree):
    benchmark.group = f"sample {len(tree.pids)} procs"
    sampler = _native.TreeSampler(tree.root)
    s = benchmark(sampler.sample)
    assert s.nprocs == len(tree.pids)


def test_native_full(benchmark, tree):
    benchmark.group = f"sample {len(tree.pids)} procs"
    sampler = _native.TreeSampler(tree.root)
    s = benchmark(sampler.sample_full)
    assert s.pss_bytes is not None


def test_psutil(benchmark, tree):
    benchmark.group = f"sample {len(tree.pids)} procs"
    root = psutil.Process(tree.root)
    cpu, rss = benchmark(psutil_sample, root)
    assert rss > 0

