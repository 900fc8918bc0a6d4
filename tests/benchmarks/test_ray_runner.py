"""On demand (Ray is the ``ray`` extra, not a dev dependency; tests/benchmarks is not collected by
default): the Ray runner on a local Ray instance gives the same collection as the local path (folders
and catalogs), resumes a failed job from the store (only the shards that were running are redone),
decodes in a memory-limited child process inside each actor, and gives each actor a GPU when the
cluster has GPUs.

    pip install -c constraints.txt -e '.[dev,ray]'
    HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider tests/benchmarks/test_ray_runner.py
"""

from __future__ import annotations

import os

import pytest

from indexer import distributed, import_catalog, index_folder
from indexer.distributed import LocalRunner, RayRunner, Sharded
from tests.integration.test_ray import assert_same, catalog_state, collection_state, make_catalog, make_folder
from tests.support import imagegen

ray = pytest.importorskip("ray", reason="on demand: needs the ray extra (pip install 'searchengine[ray]')")


def _start(**resources):
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(include_dashboard=False, log_to_driver=False, **resources)


@pytest.fixture(scope="module")
def local_ray():
    _start(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def ray_with_a_fake_gpu():
    """A local Ray that says it has one GPU (Ray schedules on declared resources; torch finds no
    CUDA device, so the actor's model runs on the CPU): the actor pool must reserve it."""
    was_running = ray.is_initialized()
    ray.shutdown()
    _start(num_cpus=2, num_gpus=1)
    yield
    ray.shutdown()
    if was_running:
        _start(num_cpus=2)


class Capturing(RayRunner):
    """The Ray runner, keeping each part it hands over (the driver removes the files once ingested)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.parts: dict[str, distributed.Part] = {}

    def map(self, shards, job):
        for name, data in super().map(shards, job):
            self.parts[name] = distributed.read_part(data)
            yield name, data


def test_ray_runner_equals_local_path_and_resumes(tmp_path, tiny_model, monkeypatch, local_ray):
    folder = make_folder(tmp_path)
    plain = index_folder([folder], collection="plain", model=tiny_model)
    on_ray = index_folder([folder], collection="ray", model=tiny_model,
                          sharded=Sharded(RayRunner(concurrency=2), shard_size=4))
    for key in ("added", "failed", "duplicates", "encoded"):
        assert getattr(on_ray, key) == getattr(plain, key), key
    assert_same(collection_state("plain", folder), collection_state("ray", folder))

    # a job that fails at shard 2 (here on the local runner), resumed on Ray: shards 0 and 1 are in
    # the store already, so only the other 6 files run, as two new shards
    real = distributed.encode_shard

    def fail_shard_2(entries, job, name="", encoder=None):
        if name == "shard-00002":
            raise RuntimeError("worker lost")
        return real(entries, job, name, encoder)

    monkeypatch.setattr(distributed, "encode_shard", fail_shard_2)
    with pytest.raises(RuntimeError, match="worker lost"):
        index_folder([folder], collection="resumed", model=tiny_model, sharded=Sharded(LocalRunner(), shard_size=4))
    first = collection_state("resumed", folder)
    assert len(first["images"]) + len(first["errors"]) == 8
    monkeypatch.setattr(distributed, "encode_shard", real)  # not undo(): that would also drop the test's data dir
    runner = Capturing(concurrency=2)
    resumed = index_folder([folder], collection="resumed", model=tiny_model, sharded=Sharded(runner, shard_size=4))
    assert sorted(runner.parts) == ["shard-00000", "shard-00001"]  # Ray returns shards as they finish
    assert sum(len(p.files) for p in runner.parts.values()) == 6 and resumed.unchanged == len(first["images"])
    assert_same(collection_state("plain", folder), collection_state("resumed", folder))


def test_cli_engine_ray(tmp_path, tiny_model, local_ray):
    from typer.testing import CliRunner

    from searchengine.cli import app

    folder = make_folder(tmp_path)
    index_folder([folder], collection="plain", model=tiny_model)
    result = CliRunner().invoke(app, ["index", str(folder), "-c", "cli", "-m", tiny_model, "--engine", "ray",
                                      "--shard-size", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert_same(collection_state("plain", folder), collection_state("cli", folder))


def test_catalog_import_on_ray_equals_the_local_import(tmp_path, tiny_model, local_ray):
    catalog, folder = make_catalog(tmp_path)
    import_catalog(catalog, collection="plain", model=tiny_model)
    runner = Capturing(concurrency=2)
    import_catalog(catalog, collection="ray", model=tiny_model, sharded=Sharded(runner, shard_size=3))
    assert sorted(runner.parts) == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    a, b = catalog_state("plain", folder), catalog_state("ray", folder)
    assert_same(a, b)
    assert a["products"] == b["products"] and a["all_errors"] == b["all_errors"]
    workers = {p.worker["pid"] for p in runner.parts.values()}
    assert os.getpid() not in workers and all(p.worker["device"] == "cpu" for p in runner.parts.values())


def test_a_file_over_the_memory_limit_costs_one_file_on_ray_too(tmp_path, tiny_model, monkeypatch, local_ray):
    """The actor decodes in a child process under the decode memory limit, as the local path does:
    the huge file is an error, the actor and the rest of its shard are fine."""
    folder = make_folder(tmp_path, n=4)
    imagegen.big_png(folder / "huge.png", (9000, 9000))  # 81 MB grey, 243 MB as RGB
    monkeypatch.setenv("SEARCHENGINE_DECODE_MEMORY_MB", "64")
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "1")  # the local path under the same limit (tests default to 0)
    plain = index_folder([folder], collection="plain", model=tiny_model)
    on_ray = index_folder([folder], collection="ray", model=tiny_model,
                          sharded=Sharded(RayRunner(concurrency=1), shard_size=100))
    huge = str(folder / "huge.png")
    assert (plain.failed, on_ray.failed) == (2, 2)  # the truncated JPEG and the huge PNG
    assert {e.path: e.error for e in on_ray.errors}[huge].startswith("out of memory decoding this file")
    assert_same(collection_state("plain", folder), collection_state("ray", folder))


def test_actors_reserve_a_gpu_each_on_a_cluster_with_gpus(tmp_path, tiny_model, ray_with_a_fake_gpu):
    folder = make_folder(tmp_path, n=4)
    index_folder([folder], collection="plain", model=tiny_model)
    runner = Capturing()  # the default pool: one actor per GPU
    index_folder([folder], collection="gpu", model=tiny_model, sharded=Sharded(runner, shard_size=2))
    assert len(runner.parts) == 3
    assert {p.worker["gpus"] for p in runner.parts.values()} == {"0"}  # Ray gave the actor GPU 0
    assert len({p.worker["pid"] for p in runner.parts.values()}) == 1  # one actor, the model loaded once
    assert_same(collection_state("plain", folder), collection_state("gpu", folder))
    # --device cpu leaves the GPUs alone: actors reserve CPUs and see no GPU
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SEARCHENGINE_DEVICE", "cpu")
    try:
        cpu = Capturing()
        index_folder([folder], collection="cpu", model=tiny_model, sharded=Sharded(cpu, shard_size=2))
    finally:
        monkeypatch.undo()
    assert {p.worker["gpus"] for p in cpu.parts.values()} <= {None, ""}
    assert_same(collection_state("plain", folder), collection_state("cpu", folder))
