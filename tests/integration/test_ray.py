"""Sharded indexing (indexer/distributed.py): the shared per-shard function, part files, resume,
and equality with the local path. These run in the default suite on the in-process shard runner;
the same checks on a local Ray instance are in tests/benchmarks/test_ray_runner.py (on demand: Ray
is the ``ray`` extra, not a dev dependency)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from indexer import distributed, import_catalog, index_folder
from indexer.distributed import (
    LocalRunner,
    Sharded,
    ShardJob,
    encode_shard,
    make_shards,
    part_bytes,
    read_part,
    write_part,
)
from indexer.pipeline import DecodeOptions, decode_one
from indexer.scan import scan
from searchengine.engine import SearchEngine
from searchengine.imaging import image_extensions
from searchengine.models.clip import load_encoder
from tests.support import imagegen


def make_folder(root: Path, n: int = 12) -> Path:
    """``n`` distinct photos, one duplicate of photo 0, one truncated JPEG, in two folders."""
    folder = root / "album"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        imagegen.photo(folder / ("sub" if i % 4 == 0 else "") / f"p{i:02d}.jpg", seed=i)
    shutil.copy(folder / "sub" / "p00.jpg", folder / "copy-of-p00.jpg")
    imagegen.truncated_jpeg(folder / "broken.jpg")
    return folder


def collection_state(name: str, folder: Path) -> dict:
    """path -> (content hash, width, height, vector) for images, plus path -> error for failures."""
    with SearchEngine.open(name) as engine:
        cid = engine.collection.id
        rows = engine.store.images_under(cid, [str(folder)])
        vectors = engine.store.vectors_for(cid, [r.id for r in rows])
        assert engine.index.ntotal == len(rows)
        images = {r.path: (r.content_hash, r.width, r.height, v) for r, v in zip(rows, vectors)}
        errors = {e.path: e.error for e in engine.store.file_errors(cid, [str(folder)])}
    return {"images": images, "errors": errors}


def assert_same(a: dict, b: dict) -> None:
    assert a["images"].keys() == b["images"].keys()
    for path, (h, w, ht, vec) in a["images"].items():
        h2, w2, ht2, vec2 = b["images"][path]
        assert (h, w, ht) == (h2, w2, ht2), path
        np.testing.assert_allclose(vec, vec2, atol=2e-3)
    assert a["errors"] == b["errors"]


class Recorder:
    """A progress sink (indexer.Progress) that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, total: int) -> None:
        self.events.append(("start", total))

    def advance(self, n: int) -> None:
        self.events.append(("advance", n))

    def close(self) -> None:
        self.events.append(("close",))


def job_for(spec: str) -> ShardJob:
    return ShardJob(model_spec=spec, device="cpu", max_pixels=50_000_000)


def test_encode_shard_decodes_safely_and_encodes_each_content_once(tmp_path, tiny_model):
    folder = make_folder(tmp_path, n=3)
    entries = scan([str(folder)], image_extensions()).files
    encoder = load_encoder(tiny_model, "cpu")
    part = encode_shard(list(reversed(entries)), job_for(tiny_model), "shard-00000", encoder)

    assert [d.entry.path for d in part.files] == sorted(e.path for e in entries)
    by_name = {Path(d.entry.path).name: d for d in part.files}
    assert by_name["broken.jpg"].error and by_name["broken.jpg"].content_hash
    assert all(d.pixels is None for d in part.files)
    good = [d for d in part.files if d.error is None]
    assert len(good) == 4 and len(part.vectors) == 3  # the copy of p00 is encoded once
    assert by_name["copy-of-p00.jpg"].content_hash == by_name["p00.jpg"].content_hash
    # the same vectors as decoding one file at a time with the engine's decoder and encoding it
    options = DecodeOptions(pil_stage=encoder.pil_stage, known_hashes=frozenset(), max_pixels=50_000_000,
                            draft_size=encoder.image_size)
    for d in good:
        one = decode_one(d.entry, options)
        assert one.content_hash == d.content_hash and (one.width, one.height) == (d.width, d.height)
        np.testing.assert_allclose(part.vectors[d.content_hash], encoder.encode_pixels([one.pixels])[0], atol=1e-5)
    assert by_name["broken.jpg"].error == decode_one(by_name["broken.jpg"].entry, options).error


def test_encode_shard_skips_known_contents(tmp_path, tiny_model):
    folder = make_folder(tmp_path, n=2)
    entries = scan([str(folder)], image_extensions()).files
    encoder = load_encoder(tiny_model, "cpu")
    first = encode_shard(entries, job_for(tiny_model), encoder=encoder)
    known = frozenset(first.vectors)
    second = encode_shard(entries, ShardJob(tiny_model, device="cpu", max_pixels=50_000_000, known_hashes=known),
                          encoder=encoder)
    assert second.vectors == {}  # hashed, not decoded nor encoded: the writer reuses the stored vectors
    assert [d.content_hash for d in second.files] == [d.content_hash for d in first.files]


def test_empty_shard_list():
    assert make_shards([], 4) == []


def test_shards_are_fixed_size_in_path_order(tmp_path):
    folder = make_folder(tmp_path, n=5)
    entries = scan([str(folder)], image_extensions()).files
    shards = make_shards(list(reversed(entries)), 3)
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [len(s.entries) for s in shards] == [3, 3, 1]
    assert [e.path for s in shards for e in s.entries] == sorted(e.path for e in entries)
    assert make_shards(entries, 3) == shards


def test_part_file_round_trip_without_pickle(tmp_path, tiny_model):
    folder = make_folder(tmp_path, n=2)
    (folder / "p01.txt").write_text("a caption")
    entries = scan([str(folder)], image_extensions()).files
    part = encode_shard(entries, job_for(tiny_model), "shard-00007")
    path = tmp_path / "parts" / "shard-00007.npz"
    write_part(path, part_bytes(part))
    back = read_part(path)  # np.load(allow_pickle=False) inside
    assert back.shard == "shard-00007" and back.files == part.files
    assert back.worker == part.worker == dict(host=socket.gethostname(), pid=os.getpid(), device="cpu",
                                              gpus=os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert read_part(path.read_bytes()).files == part.files  # from bytes too, as a runner hands them over
    assert back.vectors.keys() == part.vectors.keys()
    for h, vec in part.vectors.items():
        assert back.vectors[h].dtype == np.float32 and np.array_equal(back.vectors[h], vec)
    assert any(d.caption == "a caption" for d in back.files)
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_part_file_is_never_seen_half_written(tmp_path, monkeypatch):
    path = tmp_path / "job" / "shard-00000.npz"
    write_part(path, b"complete part")

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(distributed.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_part(path, b"a newer part that never got to disk")
    with pytest.raises(OSError):
        write_part(tmp_path / "job" / "shard-00001.npz", b"x" * 1000)
    assert path.read_bytes() == b"complete part"  # the old part stays whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["shard-00000.npz"]  # no partial file, no temp left


def test_sharded_local_runner_equals_local_path_and_resumes(tmp_path, tiny_model, monkeypatch):
    folder = make_folder(tmp_path)
    plain = index_folder([folder], collection="plain", model=tiny_model)

    real = distributed.encode_shard
    calls: list[str] = []

    def fail_shard_2_once(entries, job, name="", encoder=None):
        calls.append(name)
        if name == "shard-00002" and calls.count(name) == 1:
            raise RuntimeError("worker lost")
        return real(entries, job, name, encoder)

    monkeypatch.setattr(distributed, "encode_shard", fail_shard_2_once)
    sharded = Sharded(LocalRunner(), shard_size=4)  # 14 files: shards of 4, 4, 4, 2
    progress = Recorder()
    with pytest.raises(RuntimeError, match="worker lost"):
        index_folder([folder], collection="sharded", model=tiny_model, sharded=sharded, progress=progress)
    assert progress.events == [("start", 14), ("advance", 4), ("advance", 4), ("close",)]  # as shards finish
    assert not any((tmp_path / "home").rglob("shard-*.npz"))  # each part deleted once written
    first = collection_state("sharded", folder)  # the finished shards are in the store already
    shards = make_shards(scan([str(folder)], image_extensions()).files, 4)
    assert sorted([*first["images"], *first["errors"]]) == sorted(e.path for s in shards[:2] for e in s.entries)

    progress = Recorder()
    report = index_folder([folder], collection="sharded", model=tiny_model, sharded=sharded, progress=progress)
    # only the 6 files of the shards that did not finish are new: cut into two shards of their own
    assert sharded.ran == ["shard-00000", "shard-00001"]
    assert progress.events == [("start", 6), ("advance", 4), ("advance", 2), ("close",)]
    assert calls == ["shard-00000", "shard-00001", "shard-00002", "shard-00000", "shard-00001"]
    assert not any((tmp_path / "home").rglob("*.npz"))
    assert report.added + len(first["images"]) == plain.added
    assert report.failed + len(first["errors"]) == plain.failed
    assert_same(collection_state("plain", folder), collection_state("sharded", folder))

    # incremental: a second sharded run finds nothing to do; a new file is encoded alone
    again = index_folder([folder], collection="sharded", model=tiny_model, sharded=sharded)
    assert (again.unchanged, again.added, again.encoded) == (13, 0, 0) and len(calls) == 5
    imagegen.photo(folder / "new.jpg", seed=500)
    os.utime(folder / "sub" / "p00.jpg", (1_000_000_000, 1_000_000_000))  # touched only: hashed, not encoded
    more = index_folder([folder], collection="sharded", model=tiny_model, sharded=sharded)
    assert (more.added, more.encoded, more.unchanged) == (1, 1, 13) and sharded.ran == ["shard-00000"]


def test_a_part_not_yet_written_when_the_run_stopped_is_written_next_time_not_computed(tmp_path, tiny_model,
                                                                                        monkeypatch):
    from indexer.writer import Writer

    folder = make_folder(tmp_path, n=6)
    real_write, real_shard = Writer.write, distributed.encode_shard
    calls: list[str] = []

    def counting(entries, job, name="", encoder=None):
        calls.append(name)
        return real_shard(entries, job, name, encoder)

    def store_down(self, batch, encoded=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(distributed, "encode_shard", counting)
    monkeypatch.setattr(Writer, "write", store_down)
    sharded = Sharded(LocalRunner(), shard_size=3)
    with pytest.raises(OSError, match="No space left"):
        index_folder([folder], collection="sharded", model=tiny_model, sharded=sharded)
    assert calls == ["shard-00000"] and len(list((tmp_path / "home").rglob("shard-00000.npz"))) == 1

    monkeypatch.setattr(Writer, "write", real_write)
    index_folder([folder], collection="sharded", model=tiny_model, sharded=sharded)
    assert calls == ["shard-00000", "shard-00001", "shard-00002"] and sharded.ran == ["shard-00001", "shard-00002"]
    index_folder([folder], collection="plain", model=tiny_model)
    assert_same(collection_state("plain", folder), collection_state("sharded", folder))
    assert not (tmp_path / "home" / "collections" / "sharded" / "parts").exists()


def test_cli_engine_ray_without_the_extra_names_it(tmp_path, tiny_model, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from searchengine.cli import app

    folder = make_folder(tmp_path, n=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    result = CliRunner().invoke(app, ["index", str(folder), "-m", tiny_model, "--engine", "ray"])
    assert result.exit_code != 0
    assert "pip install 'searchengine[ray]'" in result.output
    bogus = CliRunner().invoke(app, ["index", str(folder), "-m", tiny_model, "--engine", "spark"])
    assert bogus.exit_code != 0 and "--engine must be local or ray" in bogus.output
    assert not (tmp_path / "home" / "collections" / "default").exists()  # refused before a collection was made
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(f"id,images\np1,{folder / 'p00.jpg'}\n")
    for engine, message in (("ray", "pip install 'searchengine[ray]'"), ("spark", "--engine must be local or ray")):
        result = CliRunner().invoke(app, ["import", str(catalog), "-m", tiny_model, "--engine", engine])
        assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "home" / "collections" / "default").exists()


@pytest.mark.parametrize("resources, device, shards, concurrency, plan", [
    ({"CPU": 8.0}, "auto", 100, None, (8, 0, 1)),  # one actor a CPU, each reserving it
    ({"CPU": 16.0, "GPU": 4.0}, "auto", 100, None, (4, 1, 0)),  # one actor a GPU
    ({"CPU": 16.0, "GPU": 4.0}, "cuda", 100, None, (4, 1, 0)),
    ({"CPU": 16.0, "GPU": 4.0}, "cpu", 100, None, (16, 0, 1)),  # --device cpu leaves the GPUs alone
    ({"CPU": 16.0, "GPU": 4.0}, "auto", 2, None, (2, 1, 0)),  # never more actors than shards
    ({"CPU": 8.0}, "auto", 100, 3, (3, 0, 1)),  # a given count wins
    ({}, "auto", 5, None, (1, 0, 1)),  # a cluster that reports nothing still gets an actor
])
def test_ray_actor_pool_plan(resources, device, shards, concurrency, plan):
    got = distributed.plan_pool(resources, device, shards, concurrency)
    assert (got.actors, got.num_gpus, got.num_cpus) == plan


def test_shard_jobs_decode_like_their_runner(tmp_path, tiny_model, monkeypatch):
    """Ray actors decode in a child process (a hung or huge file costs the file, not the actor);
    the local runner follows the engine's decode-worker setting, as the local path does."""
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "3")
    with SearchEngine.open("jobs", model=tiny_model, create=True, writable=True) as engine:
        options = DecodeOptions(pil_stage=None, known_hashes=frozenset(), max_pixels=0, draft_size=0)
        sharded = Sharded()
        assert sharded.job_for(engine, options, distributed.RayRunner()).decode_workers == 1
        assert sharded.job_for(engine, options, distributed.RayRunner(decode_workers=0)).decode_workers == 0
        assert sharded.job_for(engine, options, LocalRunner()).decode_workers == engine.settings.decode_workers() == 3
        assert sharded.job_for(engine, options, LocalRunner(decode_workers=2)).decode_workers == 2


def make_catalog(root: Path) -> tuple[Path, Path]:
    """A CSV catalog over ``make_folder``'s photos: products with one or two images, one of them
    the truncated JPEG, one a missing file, and two products sharing a photo."""
    folder = make_folder(root, n=8)
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    missing = str(root / "gone.jpg")
    rows = ["id,images,title,color"]
    for i, path in enumerate(files):
        rows.append(f"p{i},{path}|{files[(i + 3) % len(files)]},product {i},{'red' if i % 2 else 'blue'}")
    rows.append(f"pmissing,{missing},a product whose image is missing,red")
    catalog = root / "catalog.csv"
    catalog.write_text("\n".join(rows) + "\n")
    return catalog, folder


def catalog_state(name: str, folder: Path) -> dict:
    """``collection_state`` plus the products: id -> (their image paths, title, attributes), and every error."""
    with SearchEngine.open(name) as engine:
        cid = engine.collection.id
        paths = {r.id: r.path for r in engine.store.images_under(cid, [str(folder)])}
        products = {}
        for image_id, owned in engine.store.products_of_images(cid, paths).items():
            for p in owned:
                products.setdefault(p.key, (set(), p.title, p.attributes))[0].add(paths[image_id])
        errors = {e.path: e.error for e in engine.store.file_errors(cid)}
    return dict(collection_state(name, folder), products=products, all_errors=errors)


def test_sharded_catalog_import_equals_the_local_import(tmp_path, tiny_model):
    catalog, folder = make_catalog(tmp_path)
    plain = import_catalog(catalog, collection="plain", model=tiny_model)
    sharded = Sharded(LocalRunner(decode_workers=1), shard_size=3)
    on_shards = import_catalog(catalog, collection="sharded", model=tiny_model, sharded=sharded)
    assert sharded.ran == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]  # 10 files in shards of 3
    for key in ("added", "updated", "removed", "row_errors", "download_errors"):
        assert getattr(on_shards, key) == getattr(plain, key), key
    for key in ("added", "failed", "duplicates", "encoded"):
        assert getattr(on_shards.images, key) == getattr(plain.images, key), key
    assert (plain.added, plain.images.added, plain.images.failed) == (11, 9, 2)  # broken.jpg; gone.jpg
    a, b = catalog_state("plain", folder), catalog_state("sharded", folder)
    assert_same(a, b)
    assert a["products"] == b["products"] and len(a["products"]) == 10  # pmissing has no image
    assert a["all_errors"] == b["all_errors"] and any(p.endswith("gone.jpg") for p in a["all_errors"])

    # a re-import finds nothing to encode; the sharded runner is not called
    again = import_catalog(catalog, collection="sharded", model=tiny_model, sharded=sharded)
    assert (again.unchanged, again.images.encoded, sharded.ran) == (11, 0, [])
