"""docker/: the images are linted and checked here, not built (no Docker engine runs in CI).

- hadolint (installed by the dev extra) passes both Dockerfiles with no finding at all, and the
  project's .hadolint.yaml still fails on unpinned images and unpinned pip installs;
- the images' install step is the README's install command (same constraints file, same
  pyproject.toml) with only ``-e`` dropped and the extras chosen, so the two cannot drift;
- the build context (.dockerignore) carries what the install reads and nothing else;
- compose.yaml: the API and PostgreSQL, pinned images, health checks, start order, volumes;
- the images' ENTRYPOINT/CMD, run here as a process with the images' environment, serves and
  answers the HEALTHCHECK command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "cuda": ROOT / "docker" / "Dockerfile.cuda"}
COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_CUDA = ROOT / "docker" / "compose.cuda.yaml"
PINNED_TAG = re.compile(r"^[\w./-]+:\d+\.\d+(\.\d+)?(-[\w.-]+)?(@sha256:[0-9a-f]{64})?$")


# -- a small Dockerfile reader ----------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[int, str, str]]:
    """(stage index, INSTRUCTION, arguments) for each instruction; continuations joined."""
    out: list[tuple[int, str, str]] = []
    stage, pending = -1, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, args = text.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, " ".join(args.split())))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for stage, word, args in instructions(path):
        if word == "FROM":
            found.append([])
        if stage >= 0:
            found[stage].append((word, args))
    return found


def only(stage: list[tuple[str, str]], word: str) -> str:
    hits = [args for w, args in stage if w == word]
    assert len(hits) == 1, f"expected one {word} in the stage, found {hits}"
    return hits[0]


def builder_stage(path: Path) -> list[tuple[str, str]]:
    named = [s for s in stages(path) if only(s, "FROM").lower().endswith(" as builder")]
    assert len(named) == 1, f"{path.name}: expected one stage named builder"
    return named[0]


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(args.split("=", 1) for _, word, args in instructions(path) if word == "ARG" and "=" in args)


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def pip_install_line(path: Path) -> list[str]:
    """The image's install command, tokenised, with build args substituted."""
    runs = [args for _, word, args in instructions(path) if word == "RUN" and "pip install" in args]
    assert len(runs) == 1, f"{path.name}: expected one RUN with pip install, found {runs}"
    tokens = [t for t in shlex.split(runs[0]) if not t.startswith("--mount=")]
    defaults = arg_defaults(path)
    return [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], t) for t in tokens]


def readme_install_line() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in quickstart.splitlines() if line.startswith("pip install")]
    assert lines, "the README's Quickstart has no pip install line"
    return shlex.split(lines[0], comments=True)


def hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: install the dev extra (pip install -c constraints.txt -e '.[dev]')"
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


# -- lint --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_has_no_findings(kind):
    result = run_hadolint(DOCKERFILES[kind])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_config_ignores_no_rule():
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text(encoding="utf-8"))
    assert config.get("failure-threshold") == "style"
    assert not config.get("ignored"), "a rule may be ignored only with a reason; none is needed now"


@pytest.mark.parametrize(("mutation", "rule"), [
    (lambda s: s.replace("FROM python:3.11.14-slim-bookworm AS builder", "FROM python:latest AS builder"), "DL3007"),
    (lambda s: s.replace("FROM python:3.11.14-slim-bookworm AS builder", "FROM python AS builder"), "DL3006"),
    (lambda s: s.replace("FROM python:3.11.14-slim-bookworm AS builder",
                         "FROM quay.io/python/python:3.11.14 AS builder"), "DL3026"),
    (lambda s: s.replace("RUN python -m venv /opt/venv", "RUN python -m venv /opt/venv && pip install requests"),
     "DL3013"),
    (lambda s: s.replace("USER 10001:10001", "USER root"), "DL3002"),
], ids=["latest", "untagged", "untrusted-registry", "unpinned-pip", "root"])
def test_hadolint_catches_a_broken_dockerfile(tmp_path, mutation, rule):
    original = DOCKERFILES["cpu"].read_text(encoding="utf-8")
    broken = mutation(original)
    assert broken != original, "the mutation no longer applies: update this test with the Dockerfile"
    path = tmp_path / "Dockerfile"
    path.write_text(broken, encoding="utf-8")
    result = run_hadolint(path)
    assert result.returncode != 0 and rule in result.stdout, result.stdout + result.stderr


# -- the install step is the README's ---------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_install_step_is_the_readme_command(kind):
    readme = readme_install_line()  # pip install -c constraints.txt -e ".[dev]"
    image = pip_install_line(DOCKERFILES[kind])
    target = next(t for t in image if t.startswith(".["))
    expected = [target if t.startswith(".[") else t for t in readme if t != "-e"]
    assert image == expected, f"{kind}: {image} drifted from the README's {readme}"
    constraints = readme[readme.index("-c") + 1]
    assert (ROOT / constraints).is_file()
    builder = builder_stage(DOCKERFILES[kind])
    copied = [args.split() for w, args in builder if w == "COPY" and "--from" not in args]
    assert any(constraints in c[:-1] and "pyproject.toml" in c[:-1] for c in copied), copied


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_image_extras_exist_and_serve_with_postgres(kind):
    extras = re.fullmatch(r"\.\[([\w,-]*)\]", pip_install_line(DOCKERFILES[kind])[-1]).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert set(extras) <= set(declared), set(extras) - set(declared)
    assert {"server", "postgres"} <= set(extras)
    assert "dev" not in extras
    # faiss-gpu-cu12 ships the same `faiss` module as faiss-cpu (a core dependency): never both
    assert "gpu" not in extras


def test_both_images_install_the_same_thing():
    assert pip_install_line(DOCKERFILES["cpu"]) == pip_install_line(DOCKERFILES["cuda"])


# -- image structure ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_images_are_multi_stage_pinned_non_root_and_healthchecked(kind):
    path = DOCKERFILES[kind]
    found = stages(path)
    assert len(found) >= 2, "multi-stage: a builder and a runtime"
    for stage in found:
        image = only(stage, "FROM").split()[0]
        assert PINNED_TAG.match(image), f"{kind}: base image {image!r} is not pinned to an exact version"
    runtime = found[-1]
    assert "pip install" not in " ".join(args for w, args in runtime if w == "RUN"), "the runtime installs nothing"
    assert any(w == "COPY" and args.startswith("--from=builder /opt/venv") for w, args in runtime)
    user = only(runtime, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"{kind}: runtime user {user!r} must be a non-root uid:gid"
    assert only(runtime, "EXPOSE") == "8000"
    assert json.loads(only(runtime, "ENTRYPOINT")) == ["searchengine"]
    cmd = json.loads(only(runtime, "CMD"))
    assert cmd[0] == "serve" and cmd[cmd.index("--port") + 1] == "8000"
    health = json.loads(only(runtime, "HEALTHCHECK").split(" CMD ", 1)[1])
    assert "http://127.0.0.1:8000/api/health" in health[-1]
    env = env_of(runtime)
    assert env["SEARCHENGINE_HOME"] == "/data" and env["HF_HOME"].startswith("/models/")
    assert json.loads(only(runtime, "VOLUME")) == ["/data", "/models"]


def test_health_route_exists_and_needs_no_key():
    from fastapi.testclient import TestClient

    from searchengine.server import ServerConfig, create_app

    def no_engine():
        raise AssertionError("the health check must not open the engine")

    app = create_app(no_engine, ServerConfig(read_keys=("r",), admin_keys=("a",)))
    assert TestClient(app).get("/api/health").status_code == 200


# -- build context -----------------------------------------------------------------------------------
def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        rules.append((keep, re.compile(regex)))
    return rules


def in_build_context(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for keep, regex in _ignore_rules():
        if any(regex.fullmatch(p) for p in prefixes):
            included = keep
    return included


@pytest.mark.parametrize("path", [
    "pyproject.toml", "constraints.txt", "README.md", "searchengine/server/app.py",
    "searchengine/models/lite/heads.safetensors", "indexer/pipeline.py",
])
def test_build_context_has_what_the_install_reads(path):
    assert in_build_context(path)


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".venv-cr/bin/python", ".git/HEAD", "data/cache/openclipart/a.png",
    "test-artifacts/shot.png", "tests/unit/test_docker.py", "searchengine/__pycache__/cli.cpython-311.pyc",
    "searchengine.egg-info/PKG-INFO", "docker/.env",
])
def test_build_context_leaves_out_the_rest(path):
    assert not in_build_context(path)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_every_copied_path_is_in_the_build_context(kind):
    for stage in stages(DOCKERFILES[kind]):
        for word, args in stage:
            if word == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    assert (ROOT / source).exists() and in_build_context(source), source


# -- compose -----------------------------------------------------------------------------------------
def _compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_compose_runs_the_api_on_postgres():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"api", "postgres"}
    api, pg = services["api"], services["postgres"]
    assert (ROOT / "docker" / api["build"]["context"] / api["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]
    assert PINNED_TAG.match(pg["image"]) and pg["image"].startswith("postgres:"), pg["image"]
    assert api["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    runtime = stages(DOCKERFILES["cpu"])[-1]
    image_check = json.loads(only(runtime, "HEALTHCHECK").split(" CMD ", 1)[1])
    assert api["healthcheck"]["test"] == ["CMD", *image_check], "compose and the image check health alike"

    env = api["environment"]
    db = re.fullmatch(r"postgresql\+psycopg://(\w+):\$\{POSTGRES_PASSWORD:\?[^}]*\}@(\w+):5432/(\w+)",
                      env["SEARCHENGINE_DB"])
    assert db, env["SEARCHENGINE_DB"]
    user, host, name = db.groups()
    assert host == "postgres"
    assert (user, name) == (pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"])
    # the container listens on 0.0.0.0, which `serve` refuses without keys
    assert env["SEARCHENGINE_READ_KEYS"] and env["SEARCHENGINE_ADMIN_KEYS"]
    assert env["SEARCHENGINE_HOME"] == env_of(runtime)["SEARCHENGINE_HOME"]
    assert any(p.endswith(":8000") for p in api["ports"]) and all(p.startswith("127.0.0.1:") for p in api["ports"])


def _mount(volume: str) -> tuple[str, str]:
    """(container path, source) of a short-syntax volume such as ``data:/data`` or ``${X:-y}:/p:ro``."""
    source, target = re.sub(r":(ro|rw)$", "", volume).rsplit(":", 1)
    return target, source


def test_compose_volumes_are_named_and_declared():
    compose = _compose()
    declared = set(compose["volumes"])
    mounts = {name: dict(_mount(v) for v in svc["volumes"]) for name, svc in compose["services"].items()}
    assert mounts["api"]["/data"] in declared and mounts["api"]["/models"] in declared
    assert mounts["postgres"]["/var/lib/postgresql/data"] in declared
    assert mounts["api"]["/data"] != mounts["postgres"]["/var/lib/postgresql/data"]


def test_no_image_is_latest_or_unpinned():
    for path in (COMPOSE, COMPOSE_CUDA):
        for name, service in _compose(path)["services"].items():
            if "image" in service and "build" not in service:
                assert PINNED_TAG.match(service["image"]), f"{path.name}: {name} uses {service['image']!r}"
    text = "\n".join(p.read_text(encoding="utf-8") for p in (COMPOSE, COMPOSE_CUDA, *DOCKERFILES.values()))
    assert not re.search(r":latest\b", text)


def test_compose_cuda_override_builds_the_cuda_image_with_a_gpu():
    api = _compose(COMPOSE_CUDA)["services"]["api"]
    assert (ROOT / "docker" / api["build"]["context"] / api["build"]["dockerfile"]).resolve() == DOCKERFILES["cuda"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_env_example_sets_every_required_variable():
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text(encoding="utf-8")))
    example = (ROOT / "docker" / "env.example").read_text(encoding="utf-8")
    given = set(re.findall(r"^(\w+)=\S", example, re.M))
    assert required and required <= given, required - given


# -- the image's command, run as a process -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_process(tmp_path: Path, keys: bool) -> tuple[list[str], list[str], dict[str, str]]:
    """The CPU image's ENTRYPOINT + CMD and HEALTHCHECK, on a free port, with the image's ENV
    (its /data and /models folders moved under tmp_path)."""
    runtime = stages(DOCKERFILES["cpu"])[-1]
    port = str(_free_port())
    bindir = Path(sys.executable).parent
    command = [str(bindir / json.loads(only(runtime, "ENTRYPOINT"))[0]), *json.loads(only(runtime, "CMD"))]
    command[command.index("--port") + 1] = port
    check = json.loads(only(runtime, "HEALTHCHECK").split(" CMD ", 1)[1])
    check = [sys.executable if check[0] == "python" else check[0], *[a.replace(":8000/", f":{port}/") for a in check[1:]]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHENGINE_")}
    for key, value in env_of(runtime).items():
        if key != "PATH":
            env[key] = re.sub(r"^/(data|models)", lambda m: str(tmp_path / m.group(1)), value)
    if keys:
        env.update(SEARCHENGINE_READ_KEYS="r", SEARCHENGINE_ADMIN_KEYS="a")
    return command, check, env


@pytest.mark.slow
def test_image_command_serves_and_passes_its_healthcheck(tmp_path):
    command, check, env = _image_process(tmp_path, keys=True)
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.communicate()[0].decode(errors="replace")
            if subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 0:
                break
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.5)
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_image_command_refuses_to_listen_without_keys(tmp_path):
    command, _, env = _image_process(tmp_path, keys=False)
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "key" in (result.stdout + result.stderr).lower()
