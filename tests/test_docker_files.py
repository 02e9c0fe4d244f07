"""The deployable stack in docker/ as far as it can be checked without a Docker engine: the compose file's services,
dependencies and healthchecks, the worker image's non-root user and HEALTHCHECK, one CUDA major version per
image, what .dockerignore keeps out of the build context, that the image's non-editable install has every package,
and that docker/README.md describes these files. `docker compose config` runs where an engine is available;
Debian's docker-compose (v1) validates the file everywhere else, with no engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in dockerfile.read_text().splitlines()
                                          if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip()]


def test_compose_services_order_and_healthchecks(compose):
    s = compose["services"]
    assert set(s) == {"postgres", "prefect-server", "worker", "vllm"}
    for name, svc in s.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    server_env = s["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    assert "@postgres:5432/" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert s["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert s["worker"]["depends_on"] == {"prefect-server": {"condition": "service_healthy"},
                                         "vllm": {"condition": "service_healthy"}}
    assert s["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert s["prefect-server"]["build"]["dockerfile"] == "docker/Dockerfile.worker"
    assert s["vllm"]["build"]["dockerfile"] == "Dockerfile.vllm"
    for name in ("worker", "vllm"):  # each on its own GPU reservation
        dev = s[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert "8080/health" in " ".join(s["worker"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(s["prefect-server"]["healthcheck"]["test"])
    # the password comes from the environment, never a literal in the file
    assert s["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    # the build contexts resolve to the repository root and docker/
    assert (DOCKER / s["prefect-server"]["build"]["context"]).resolve() == REPO
    assert (DOCKER / s["vllm"]["build"]["context"] / s["vllm"]["build"]["dockerfile"]).is_file()


def test_worker_image_is_non_root_with_a_healthcheck():
    ins = instructions(DOCKER / "Dockerfile.worker")
    names = [i for i, _ in ins]
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert names.index("USER") > max(i for i, n in enumerate(names) if n == "RUN")  # nothing runs as root after it
    hc = next(a for i, a in ins if i == "HEALTHCHECK")
    assert "CMD" in hc and "/health" in hc
    cmd = next(a for i, a in ins if i == "CMD")
    assert "--with-healthcheck" in cmd and "--pool" in cmd
    assert any(i == "HEALTHCHECK" for i, _ in instructions(DOCKER / "Dockerfile.vllm"))


def test_one_cuda_version_per_image():
    worker = (DOCKER / "Dockerfile.worker").read_text()
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", worker).group(1)
    index = re.search(r"ARG TORCH_INDEX=\S+/cu(\d+)", worker).group(1)
    assert base == "13" and index.startswith(base)  # torch's wheels match the base image's CUDA major version
    body = " ".join(a for i, a in instructions(DOCKER / "Dockerfile.worker") if i in ("RUN", "ARG"))
    assert "FAISS_GPU" not in body and "faiss-gpu-cu12\"" not in body and "cu12>=" not in body
    assert "grep -Ei '^(nvidia-[a-z-]+-cu12|faiss-gpu)'" in body  # the build itself refuses CUDA 12 libraries


def test_dockerignore_keeps_the_context_small():
    entries = {ln.strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".venv", ".cirflow", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info", ".env"} <= entries
    # what `pip install .` needs stays in
    assert not entries & {"pyproject.toml", "README.md", "cli", "flows", "tasks", "storage", "schemas", "prompts"}


def test_image_install_has_every_package():
    """The image installs cirflow non-editably: a package folder missing from pyproject's list is missing there."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool["package-dir"]
    found = set()
    for pkg, d in dirs.items():
        for init in (REPO / d).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / d)
            found.add(".".join([pkg, *rel.parts]))
    missing = sorted(found - listed)
    assert not missing, f"packages missing from pyproject [tool.setuptools] packages: {missing}"


def test_readme_matches_the_files(compose):
    readme = (DOCKER / "README.md").read_text()
    for name in compose["services"]:
        assert f"`{name}`" in readme
    for f in ("compose.yaml", "Dockerfile.worker", "Dockerfile.vllm", ".dockerignore", ".env.example"):
        assert f in readme
        assert (DOCKER / f).is_file() or (REPO / f).is_file()
    assert "--build-arg FAISS_GPU=1" not in readme
    env = {ln.split("=", 1)[0] for ln in (DOCKER / ".env.example").read_text().splitlines() if "=" in ln}
    used = set(re.findall(r"\$\{([A-Z_]+)", (DOCKER / "compose.yaml").read_text()))
    assert used <= env, f"compose variables without an example value: {sorted(used - env)}"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI here")
def test_docker_compose_config_validates(tmp_path):
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("no Docker engine reachable")
    env = tmp_path / "test.env"
    env.write_text((DOCKER / ".env.example").read_text())
    r = subprocess.run(["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env), "config",
                        "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_docker_compose_v1_validates_the_file_without_an_engine(tmp_path, compose):
    # Debian's docker-compose 1.29 (`make sysdeps`) checks services, dependencies, healthchecks and GPU
    # reservations against its schema with no engine. It predates the Compose Specification's top-level `name`:
    # that one key is passed as `-p` instead; relative paths still resolve against docker/ (--project-directory).
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI", "").lower() == "true":  # `make test` installs it; on CI missing is a failure
            pytest.fail("docker-compose is needed on CI: `make sysdeps` installs the Debian package docker-compose")
        pytest.skip("no docker-compose (v1) here: `make sysdeps` installs it")
    doc = dict(compose)
    name = doc.pop("name")
    copy = tmp_path / "compose.yaml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = tmp_path / "test.env"
    env.write_text((DOCKER / ".env.example").read_text())
    r = subprocess.run(["docker-compose", "-p", name, "--project-directory", str(DOCKER), "-f", str(copy),
                        "--env-file", str(env), "config", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
