"""Deployments and the GPU gate against a REAL `prefect server start` (own PREFECT_HOME, a free port):
a served deployment's *scheduled* run reaches Completed; a work-pool deployment runs on a process worker;
two holders of the GPU slot never overlap. Configs: PEFUSE T→I on the mini benchmark with tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from cirflow.models.mllm.server import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _env(home: Path, api_url: str | None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env | {k: str(v) for k, v in extra.items()}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` in a subprocess; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=_env(home, None, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=2),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    t0 = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - t0 < 90, "prefect server not healthy after 90 s"
            time.sleep(0.3)
        print(f"\nprefect server healthy after {time.monotonic() - t0:.1f} s")
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def run_config(tmp_path_factory, mini_bench, tiny_models) -> Path:
    d = tmp_path_factory.mktemp("deploy-cfg")
    (d / "prompt.txt").write_text("Describe the target image after this change: {modification}")
    cfg = {"name": "deploy-test", "method": "pefuse_t2i", "store": "store", "output_dir": "runs",
           "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
           "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
           "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
           "compose": {"prompt": "prompt.txt", "shard_size": 16, "sampling": {"max_tokens": 4}}}
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _client(url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(url)


def _runs(url: str, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client(url) as c:
        return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


@contextmanager
def served_until_scheduled_run(server: str, config: Path, name: str, tmp_path: Path):
    """`cirflow deploy CONFIG --name NAME --interval 10 --serve` in a subprocess until an auto-scheduled (not
    manual) run of the deployment has completed; yields the deployment, stops the server process afterwards."""
    t0 = time.monotonic()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    # relative paths in the config resolve against the deploying process's cwd (the config's folder here)
    proc = subprocess.Popen([sys.executable, "-m", "cirflow.cli.deploy", str(config), "--name", name,
                             "--interval", "10", "--serve"], cwd=config.parent,
                            env=_env(tmp_path / "serve-home", server, PREFECT_RUNNER_POLL_FREQUENCY=2),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dep = None
        while time.monotonic() - t0 < 110:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                with _client(server) as c:
                    dep = dep or c.read_deployment_by_name(f"cirflow/{name}")
            except Exception:  # noqa: BLE001 - not registered yet
                time.sleep(1)
                continue
            runs = _runs(server, dep.id)
            bad = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
            assert not bad, (bad[0].state, log_path.read_text()[-3000:])
            if [r for r in runs if r.state and r.state.is_completed() and r.auto_scheduled]:
                break
            time.sleep(1)
        else:
            pytest.fail(f"no scheduled run of {name} completed in 110 s: {log_path.read_text()[-3000:]}")
        print(f"\nscheduled run completed {time.monotonic() - t0:.1f} s after `cirflow deploy --serve` started")
        yield dep
    finally:
        _stop(proc)
        log.close()
    assert time.monotonic() - t0 < 120


def test_scheduled_run_of_a_served_deployment_completes(server, run_config, tmp_path):
    with served_until_scheduled_run(server, run_config, "every-10s", tmp_path) as dep:
        assert dep.schedules[0].schedule.interval.total_seconds() == 10
        cfg = dep.parameters["config"]
        assert cfg["method"] == "pefuse_t2i" and cfg["store"] == str(run_config.parent / "store")
        assert cfg["compose"]["prompt"] == str(run_config.parent / "prompt.txt")
        summaries = list((run_config.parent / "runs" / "deploy-test").glob("*/summary.json"))
        assert summaries and "recall@1" in json.loads(summaries[0].read_text())["metrics"]


def test_work_pool_deployment_runs_on_a_process_worker(server, run_config, tmp_path, capsys):
    from cirflow.cli.deploy import main as deploy_main
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    cwd = os.getcwd()
    os.chdir(run_config.parent)
    try:
        with temporary_settings({PREFECT_API_URL: server}):
            assert deploy_main([str(run_config), "--name", "nightly", "--cron", "0 3 * * *", "--work-pool",
                                "gpu-pool", "--json"]) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out  # prefect's own deploy table comes first, our JSON last
    out = json.loads(printed[printed.index('{\n  "deployment_id"'):])
    assert out["work_pool"] == "gpu-pool" and out["work_pool_created"] is True
    with _client(server) as c:
        dep = c.read_deployment_by_name("cirflow/nightly")
        assert dep.work_pool_name == "gpu-pool" and dep.entrypoint == "cirflow.flows.deploy.run_deployment"
        assert dep.schedules[0].schedule.cron == "0 3 * * *"
        assert c.read_work_pool("gpu-pool").type == "process"
        run = c.create_flow_run_from_deployment(dep.id)  # a manual run now, instead of waiting for 03:00
    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "gpu-pool", "--run-once"],
                            env=_env(tmp_path / "worker-home", server), capture_output=True, text=True,
                            timeout=110, cwd=tmp_path)
    with _client(server) as c:
        state = c.read_flow_run(run.id).state
    assert state.is_completed(), (state, worker.stdout[-3000:], worker.stderr[-3000:])
    print(f"\nwork-pool run completed {time.monotonic() - t0:.1f} s after deploy")


def test_gpu_slot_holders_never_overlap_and_the_limit_is_created(server, tmp_path):
    code = ("import json, time\nfrom cirflow.flows.gpu import gpu_slot\n"
            "with gpu_slot('test-gpu') as held:\n    a = time.time(); time.sleep(1.5); b = time.time()\n"
            "print(json.dumps({'held': held, 'enter': a, 'exit': b}))\n")
    with _client(server) as c:
        from prefect.exceptions import ObjectNotFound

        with pytest.raises(ObjectNotFound):
            c.read_global_concurrency_limit_by_name("test-gpu")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path / f"h{i}", server),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=90) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    spans = sorted((json.loads(o.strip().splitlines()[-1]) for o, _ in outs), key=lambda s: s["enter"])
    assert all(s["held"] for s in spans)
    assert spans[0]["exit"] <= spans[1]["enter"], spans  # the second waited for the first to release
    with _client(server) as c:
        lim = c.read_global_concurrency_limit_by_name("test-gpu")
        assert lim.limit == 1 and lim.active and lim.active_slots == 0

    # no API: a no-op that yields False (plain Python use, CPU tests)
    noop = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path / "h-none", None),
                          capture_output=True, text=True, timeout=60)
    assert json.loads(noop.stdout.strip().splitlines()[-1])["held"] is False, noop.stderr


def test_deploy_config_errors_are_one_line(tmp_path, run_config, capsys):
    from cirflow.cli.deploy import main as deploy_main
    from cirflow.flows.deploy import load_deploy_config
    from prefect.settings import PREFECT_API_URL, temporary_settings

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(yaml.safe_load(run_config.read_text()) | {"method": "nope"}))
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert deploy_main([str(bad), "--name", "x", "--serve"]) == 2
    assert "method 'nope' has no flow" in capsys.readouterr().err
    with temporary_settings({PREFECT_API_URL: None}):
        assert deploy_main([str(run_config), "--name", "x", "--serve"]) != 0
    assert "PREFECT_API_URL" in capsys.readouterr().err
    typo = yaml.safe_load(run_config.read_text()) | {"compse": {}}
    with pytest.raises(Exception, match="compse"):
        load_deploy_config(typo)


@pytest.fixture(scope="module")
def build_config(tmp_path_factory, tiny_models) -> Path:
    """An MVFT-JI-style build over a small generated collection, with a release folder."""
    from PIL import Image

    d = tmp_path_factory.mktemp("build-cfg")
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        (d / "images" / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 48), colour).save(d / "images" / f"class{i % 2}" / f"{i}.png")
    short = {"max_tokens": 6}
    cfg = {"method": "build_mvft", "name": "nightly-mvft", "store": str(d / "store"), "output_dir": str(d / "runs"),
           "collection": {"kind": "folder", "uri": str(d / "images")},
           "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
           "captions": {"sampling": short}, "texts": {"sampling": short, "target_sampling": short},
           "release": {"out_dir": str(d / "release"), "name": "nightly-mvft"}}
    path = d / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_scheduled_build_deployment_completes(server, build_config, tmp_path):
    """`cirflow deploy` registers a dataset build with a schedule; a scheduled (not manual) run completes and the
    build's release is on disk."""
    with served_until_scheduled_run(server, build_config, "build-every-10s", tmp_path) as dep:
        assert dep.parameters["config"]["method"] == "build_mvft"
        card = (build_config.parent / "release" / "README.md").read_text()
        assert "nightly-mvft" in card
        assert list((build_config.parent / "release" / "data").glob("*.parquet"))
