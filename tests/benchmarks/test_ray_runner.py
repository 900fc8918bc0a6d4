"""On demand (Ray is the ``ray`` extra, not a dev dependency; tests/benchmarks is not collected by
default): the Ray runner on a local Ray instance gives the same collection as the local path, and
resumes a failed job without re-running its finished shards.

    pip install -c constraints.txt -e '.[dev,ray]'
    HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider tests/benchmarks/test_ray_runner.py
"""

from __future__ import annotations

import os

import pytest

from indexer import distributed, index_folder
from indexer.distributed import LocalRunner, RayRunner, Sharded
from tests.integration.test_ray import assert_same, collection_state, make_folder

ray = pytest.importorskip("ray", reason="on demand: needs the ray extra (pip install 'searchengine[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_runner_equals_local_path_and_resumes(tmp_path, tiny_model, monkeypatch, local_ray):
    folder = make_folder(tmp_path)
    plain = index_folder([folder], collection="plain", model=tiny_model)
    on_ray = index_folder([folder], collection="ray", model=tiny_model,
                          sharded=Sharded(RayRunner(concurrency=2), shard_size=4))
    for key in ("added", "failed", "duplicates", "encoded"):
        assert getattr(on_ray, key) == getattr(plain, key), key
    assert_same(collection_state("plain", folder), collection_state("ray", folder))

    # a job that fails at shard 2 (here on the local runner), resumed on Ray: shards 0 and 1 are not redone
    real = distributed.encode_shard

    def fail_shard_2(entries, job, name="", encoder=None):
        if name == "shard-00002":
            raise RuntimeError("worker lost")
        return real(entries, job, name, encoder)

    monkeypatch.setattr(distributed, "encode_shard", fail_shard_2)
    with pytest.raises(RuntimeError, match="worker lost"):
        index_folder([folder], collection="resumed", model=tiny_model, sharded=Sharded(LocalRunner(), shard_size=4))
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "home").rglob("shard-*.npz")}
    assert sorted(done) == ["shard-00000.npz", "shard-00001.npz"]
    monkeypatch.setattr(distributed, "encode_shard", real)  # not undo(): that would also drop the test's data dir
    sharded = Sharded(RayRunner(concurrency=2), shard_size=4)
    index_folder([folder], collection="resumed", model=tiny_model, sharded=sharded)
    assert sorted(sharded.ran) == ["shard-00002", "shard-00003"]  # Ray returns shards as they finish
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
