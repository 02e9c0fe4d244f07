"""A model server is contacted only when a stage that asks it would compute (issue 9 follow-up): the preflight
defers its server check to the plan (cli/run.py, flows/method.check_servers_if_needed).

Through the real CLI with a real local OpenAI-format server (tests/canned_server.py): a run computes; the server
is stopped and a bare TCP listener takes its port, counting every connection; a fully cached rerun exits 0 with
every stage cached and no connection made; an encoder-only change (compose_target_text stays cached, features
are computed) makes none either; `--plan` makes none; a changed prompt (compose_target_text would compute) with
nothing listening fails with exit 4 and one BackendUnavailable line from the preflight's GET /models, before
Prefect starts or any model loads (nothing new in the store)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer  # noqa: E402
from test_failures_end_to_end import N_QUERIES, cirflow, good, one_error_line, write_config  # noqa: E402

pytestmark = pytest.mark.slow


class CountingListener:
    """Listens on a port and counts the connections made to it; answers nothing (closes each at once)."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.connections = 0
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.closed = True
        self.sock.close()


def statuses(p) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in json.loads(p.stdout)["stages"]}


def manifests(tmp_path: Path) -> set[Path]:
    return set((tmp_path / "store").rglob("_manifest.json"))


def test_cached_rerun_never_contacts_the_server(tmp_path, mini_bench, tiny_models, prefect_server):
    server = CannedServer(good)
    config = write_config(tmp_path, server.url, mini_bench, tiny_models)
    try:
        p = cirflow(tmp_path, "run", str(config), "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        assert len(server.chats) == N_QUERIES
    finally:
        server.close()
    port = int(server.url.split(":")[-1].split("/")[0])

    listener = CountingListener(port)  # the server is gone; anything that tries to reach it is counted
    try:
        p = cirflow(tmp_path, "run", str(config), "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        assert set(statuses(p).values()) == {"cached"} and "compose_target_text" in statuses(p)
        assert listener.connections == 0

        p = cirflow(tmp_path, "run", str(config), "--plan")
        assert p.returncode == 0, p.stderr[-4000:]
        assert listener.connections == 0

        # a new encoder: features, retrieval and metrics are computed, the composed texts stay cached
        doc = yaml.safe_load(config.read_text())
        doc["encoder"]["model"] = f"local-dir:{tiny_models['encoder_b']}"
        other = tmp_path / "other_encoder.yaml"
        other.write_text(yaml.safe_dump(doc))
        p = cirflow(tmp_path, "run", str(other), "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        st = statuses(p)
        assert st["compose_target_text"] == "cached" and st["embed_texts"] == "computed", st
        assert listener.connections == 0
    finally:
        listener.close()

    # the prompt changes: compose_target_text would compute, and nothing answers on the server's port
    (tmp_path / "prompt.txt").write_text("Write a caption of the target image: {modification}")
    before, composed = manifests(tmp_path), set((tmp_path / "store").glob("compose_target_text/*"))
    p = cirflow(tmp_path, "run", str(config))
    assert p.returncode == 4, p.stderr[-4000:]
    line = one_error_line(p)
    assert server.url in line and "GET /models" in line and "unavailable" in line, line
    # failed in the preflight: no stage ran, not even the new compose_target_text's first shard
    assert manifests(tmp_path) == before
    assert set((tmp_path / "store").glob("compose_target_text/*")) == composed


def test_servers_needed_follows_the_plan():
    """The decision itself, on real plans: only an MLLM stage that would compute or resume (or any MLLM stage
    under --retry-failed, or a plan that stopped early) needs its server."""
    from cirflow.flows.method import servers_needed
    from cirflow.tasks.plan_mode import Plan, Step

    plan = Plan()
    plan.steps = [Step("ingest", "k1", "computed"), Step("compose_target_text", "k2", "cached", asks_server=True),
                  Step("embed_texts", "k3", "computed")]
    assert not servers_needed(plan)
    assert servers_needed(plan, retry_failed=True)
    for status in ("computed", "resumed"):
        plan.steps[1].status = status
        assert servers_needed(plan)
    plan.steps[1].status = "cached"
    plan.blocked = "the flow reads a stage that would be computed first"
    assert servers_needed(plan)
    assert servers_needed(None)  # no plan: assume it will


def cirevl_config(tmp_path: Path, mllm_url: str, llm_url: str, mini_bench, tiny_models, rewrite: str) -> Path:
    """CIReVL with two servers: the captioner (`mllm`, caption_images) and the text LLM (`llm`, rewrite_caption)."""
    prompts = {"caption.txt": "Describe this image.", "rewrite.txt": rewrite}
    for name, text in prompts.items():
        (tmp_path / name).write_text(text)
    server = {"backend": "http", "model": "m", "retries": 1, "backoff_s": 0.01, "timeout_s": 5}
    doc = {"name": "two-servers", "method": "cirevl", "store": str(tmp_path / "store"),
           "output_dir": str(tmp_path / "runs"), "max_failure_rate": 1.0,
           "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
           "mllm": server | {"base_url": mllm_url}, "llm": server | {"base_url": llm_url},
           "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
           "reference_caption": {"prompt": str(tmp_path / "caption.txt"), "sampling": {"max_tokens": 8}},
           "rewrite": {"prompt": str(tmp_path / "rewrite.txt"), "sampling": {"max_tokens": 8}}}
    path = tmp_path / "cirevl.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_only_the_servers_of_computing_stages_are_contacted(tmp_path, mini_bench, tiny_models):
    """Per server: with the captions cached and the rewrite prompt changed, only rewrite_caption would compute,
    so only the `llm` server is checked; the captioner's port sees no connection. The same decision serves
    `cirflow run` and the callers that run a flow themselves (cli/run.preflight: deployments, reproduce)."""
    from cirflow.cli.run import preflight
    from cirflow.flows import registry
    from cirflow.flows.method import servers_to_check
    from cirflow.flows.plan import answer_from_store, plan_config
    from cirflow.schemas.errors import BackendUnavailable

    captioner, rewriter = CannedServer(good), CannedServer(good)
    rewrite = "Image Content: {caption}\nInstruction: {modification}\nEdited Description:"
    config = cirevl_config(tmp_path, captioner.url, rewriter.url, mini_bench, tiny_models, rewrite)
    try:
        answer_from_store(registry.load_config(config))  # computes every stage (no Prefect): fills the store
        assert captioner.chats and rewriter.chats
    finally:
        captioner.close()
        rewriter.close()
    ports = [int(s.url.split(":")[-1].split("/")[0]) for s in (captioner, rewriter)]
    mllm_port, llm_port = CountingListener(ports[0]), CountingListener(ports[1])
    try:
        cfg = registry.load_config(config)
        preflight(cfg, str(config))  # every stage cached: neither server is contacted
        assert servers_to_check([cfg.mllm, cfg.llm], plan_config(cfg), retry_failed=True) == []  # no failed rows
        assert mllm_port.connections == 0 and llm_port.connections == 0

        changed = cirevl_config(tmp_path, captioner.url, rewriter.url, mini_bench, tiny_models,
                                "Caption: {caption}\nChange: {modification}\nEdited Description:")
        cfg = registry.load_config(changed)
        st = {s.stage: s.status for s in plan_config(cfg).steps}
        assert st["caption_images"] == "cached" and st["rewrite_caption"] == "computed", st
        assert servers_to_check([cfg.mllm, cfg.llm], plan_config(cfg)) == [cfg.llm]
        with pytest.raises(BackendUnavailable, match=str(llm_port.sock.getsockname()[1])):
            preflight(cfg, str(changed))
        assert mllm_port.connections == 0 and llm_port.connections == 1

        # the CLI: exit 4, one line naming the text LLM's server, before Prefect (no Prefect server is needed)
        p = subprocess.run([sys.executable, "-m", "cirflow.cli.main", "run", str(changed)], cwd=tmp_path,
                           env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"},
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 4, p.stderr[-4000:]
        line = one_error_line(p)
        assert rewriter.url in line and captioner.url not in line and "GET /models" in line, line
        assert mllm_port.connections == 0 and llm_port.connections == 2

        # a deployment's scheduled run: the same check before the method's flow (run as the deployment's body)
        from cirflow.flows.deploy import load_deploy_config, run_deployment

        with pytest.raises(BackendUnavailable, match=str(llm_port.sock.getsockname()[1])):
            run_deployment.fn(load_deploy_config(changed))
        assert mllm_port.connections == 0 and llm_port.connections == 3
    finally:
        mllm_port.close()
        llm_port.close()


def test_retry_failed_asks_only_for_stages_with_failed_rows():
    """--retry-failed: a cached MLLM stage counts only when its stored artifact has failed rows (a Step's
    `failed`, read from the manifest by the plan; unknown counts), and then only its own server."""
    from cirflow.flows.method import servers_to_check
    from cirflow.schemas.mllm import MLLMConfig
    from cirflow.tasks.plan_mode import Plan, Step

    a = MLLMConfig(backend="http", model="m", base_url="http://127.0.0.1:9/v1")
    b = MLLMConfig(backend="http", model="m", base_url="http://127.0.0.1:10/v1")
    plan = Plan()
    plan.steps = [Step("caption_images", "k1", "cached", models=(a,), failed=0, asks_server=True),
                  Step("rewrite_caption", "k2", "cached", models=(b,), failed=3, asks_server=True)]
    assert servers_to_check([a, b], plan) == []
    assert servers_to_check([a, b], plan, retry_failed=True) == [b]
    plan.steps[1].failed = 0
    assert servers_to_check([a, b], plan, retry_failed=True) == []
    plan.steps[0].failed = None  # not read from a manifest: assume it may have failed rows
    assert servers_to_check([a, b], plan, retry_failed=True) == [a]
    plan.steps[0].models = None  # an asking stage that names no model config: every server
    assert servers_to_check([a, b], plan, retry_failed=True) == [a, b]
