"""Shared fixtures: tiny random-weight models and the generated mini benchmark, built once per session, and a
Prefect test server for the flow tests. Everything is local and offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# one intra-op thread, here and in every subprocess a test starts (kill -9 / resume tests compare a subprocess's
# output with an in-process run: float results must not depend on who had how many threads)
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"


def pytest_configure(config):
    # tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription (a tiny generate()
    # took 0.4 s with two contended threads, 0.025 s with one); numerics are unchanged for these sizes
    import torch

    torch.set_num_threads(1)

# The full upstream annotation files live in ../shared (CI has it); CIRFLOW_SHARED points elsewhere, e.g.
# CIRFLOW_SHARED=/nonexistent to run the suite as on a fresh clone.
SHARED = Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "benchmarks"
# First records of the same files, committed (tests/data/README.md): what a fresh clone tests with.
SLICES = Path(__file__).resolve().parent / "data" / "benchmarks"


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    """Real annotation files in the official layout: the full files when ../shared has them, else the slices.
    Tests here only take their first few records, so both give the same records."""
    return SHARED if SHARED.is_dir() else SLICES


@pytest.fixture(scope="session")
def full_benchmarks() -> Path:
    """The full upstream files, for exactness tests (counts, published numbers); skipped without ../shared."""
    if not SHARED.is_dir():
        pytest.skip(f"full benchmark files not present at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from cirflow.models.tiny import build_tiny_open_clip, build_tiny_qwen25vl

    root = tmp_path_factory.mktemp("tiny-models")
    return {"mllm": build_tiny_qwen25vl(root / "qwen"), "encoder": build_tiny_open_clip(root / "clip"),
            "encoder_b": build_tiny_open_clip(root / "clip-b", seed=1)}


@pytest.fixture(scope="session")
def tiny_ip2p(tmp_path_factory) -> Path:
    from cirflow.models.tiny_diffusion import build_tiny_instruct_pix2pix

    return build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("tiny-ip2p") / "ip2p")


@pytest.fixture(scope="session")
def mini_bench(tmp_path_factory) -> dict[str, Path]:
    from cirflow.demo.mini_benchmark import build_mini_benchmark

    return build_mini_benchmark(tmp_path_factory.mktemp("mini-bench"))


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A temporary Prefect server (SQLite) for flow tests; about 10-20 s to start on 2 cores."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
