"""The production stack for real: a throwaway PostgreSQL cluster (Debian package), `prefect server start` on it,
a process work pool, a scheduled dataset build deployed with `cirflow deploy --work-pool`, and
`prefect worker start --pool` picking up the *scheduled* run. Asserts the run completes, Prefect's rows are
in Postgres, and the build's artifacts are in the store and verify clean.

Skipped only when PostgreSQL is not installed and this is not CI; on CI (CI=true) a missing PostgreSQL fails,
because .ci/run installs it."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from cirflow.models.mllm.server import free_port

sys.path.insert(0, str(Path(__file__).parent))
from test_deploy import BIN, _client, _env, _runs, _stop, build_config  # noqa: E402,F401 - build_config: fixture

pytestmark = pytest.mark.slow
DB = "prefect"


def _pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_owner(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: as root (CI), run them as the package's `postgres` user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh cluster on a free localhost port (trust auth, socket in its own folder), a `prefect` database;
    yields the SQLAlchemy URL Prefect takes; stopped and deleted at teardown."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PostgreSQL is not installed on CI: .ci/run should have installed the `postgresql` package")
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    # not pytest's tmp_path: its parents are 0700 root-owned, and the cluster runs as `postgres`
    root = Path(tempfile.mkdtemp(prefix="cirflow-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()

    def pg(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run(_as_owner(list(cmd)), capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, (cmd, out.stdout[-2000:], out.stderr[-2000:])
        return out

    pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60",
       "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start", timeout=90)
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DB)
        yield {"url": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DB}",
               "psql": [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", DB,
                        "-tAc"]}
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server(postgres_url, tmp_path_factory):
    """`prefect server start` with its database on the cluster above; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-pg-home")
    port = free_port()
    log_path = home / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=_env(home, None, PREFECT_API_DATABASE_CONNECTION_URL=postgres_url["url"],
                                     PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS=2),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    t0 = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - t0 < 90, "prefect server on Postgres not healthy after 90 s"
            time.sleep(0.3)
        print(f"\nprefect server on PostgreSQL healthy after {time.monotonic() - t0:.1f} s")
        yield url
    finally:
        _stop(proc)
        log.close()


def test_scheduled_build_runs_through_a_work_pool_on_a_postgres_backed_server(pg_server, postgres_url,
                                                                               build_config, tmp_path):
    t0 = time.monotonic()
    name, pool = "pg-build-every-10s", "pg-gpu-pool"
    # the deploying process's cwd is the config's folder: relative config paths resolve there
    dep = subprocess.run([sys.executable, "-m", "cirflow.cli.deploy", str(build_config), "--name", name,
                          "--interval", "10", "--work-pool", pool, "--json"], cwd=build_config.parent,
                         env=_env(tmp_path / "deploy-home", pg_server), capture_output=True, text=True, timeout=120)
    assert dep.returncode == 0, (dep.stdout[-3000:], dep.stderr[-3000:])
    out = json.loads(dep.stdout[dep.stdout.index('{\n  "deployment_id"'):])
    assert out["work_pool"] == pool and out["work_pool_created"] is True and out["method"] == "build_mvft"

    with _client(pg_server) as c:
        deployment = c.read_deployment_by_name(f"cirflow/{name}")
        assert deployment.work_pool_name == pool and c.read_work_pool(pool).type == "process"
        assert deployment.schedules[0].schedule.interval.total_seconds() == 10

    log_path = tmp_path / "worker.log"
    log = open(log_path, "wb")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                              env=_env(tmp_path / "worker-home", pg_server, PREFECT_WORKER_QUERY_SECONDS=2),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        while time.monotonic() - t0 < 150:
            assert worker.poll() is None, log_path.read_text()[-3000:]
            runs = _runs(pg_server, deployment.id)
            bad = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
            assert not bad, (bad[0].state, log_path.read_text()[-3000:])
            done = [r for r in runs if r.state and r.state.is_completed() and r.auto_scheduled]
            if done:
                break
            time.sleep(1)
        else:
            pytest.fail(f"no scheduled run completed in 150 s: {log_path.read_text()[-3000:]}")
    finally:
        _stop(worker)
        log.close()
    print(f"\nscheduled work-pool run completed {time.monotonic() - t0:.1f} s after deploy")

    # the run was recorded in PostgreSQL, not in a SQLite file next to the server
    psql = subprocess.run(_as_owner([*postgres_url["psql"], f"SELECT state_type FROM flow_run WHERE id = "
                                     f"'{done[0].id}'"]), capture_output=True, text=True, timeout=30)
    assert psql.returncode == 0 and psql.stdout.strip() == "COMPLETED", (psql.stdout, psql.stderr)
    assert not list((tmp_path.parent).glob("prefect-pg-home*/prefect.db"))

    # the build's artifacts are in the store, complete and verified, and its release is on disk
    from cirflow.storage.store import ArtifactStore

    store = ArtifactStore(str(build_config.parent / "store"))
    stages = {m.stage for m in store.manifests()}
    assert stages and store.verify() == [], (stages, store.verify())
    assert list((build_config.parent / "release" / "data").glob("*.parquet"))
    assert "nightly-mvft" in (build_config.parent / "release" / "README.md").read_text()
