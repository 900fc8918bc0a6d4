"""Crash harness: run a CLI command, SIGKILL it at a random moment, check what it left behind.

A cycle starts a command (``index``, ``import``, ``rebuild-index``...), kills it with SIGKILL
either when the store reaches a random row count or after a random delay within the command's
expected run time (a seeded RNG chooses), and checks:

* ``PRAGMA integrity_check`` is ``ok`` and ``PRAGMA foreign_key_check`` finds nothing;
* the engine opens and its index loads; after the open-time reconcile its id set equals the live
  rows (images and texts), and an index of a named factory is of that factory's type;
* nothing committed is lost: every row (image path -> id, product key -> id) seen in a snapshot
  taken after an earlier kill, or read by a reader just before this kill, is still there with the
  same id, unless the workload removed its file or catalog row;
* at most one temp file per index file lies in the collection folder (a killed save leaves one;
  the next save removes it).

A round ends with an uninterrupted run that must exit 0 without a traceback, hold every expected
file and product exactly once, leave no temp file, load its index from the file (no rebuild) and
answer a search.

Commands run in processes forked from a server that imported torch, faiss and the engine once
(``Launcher("fork")``): a cycle costs the command's own work, not 5 s of imports. The process
that does the work is the one killed. ``Launcher("spawn")`` runs ``python -m searchengine``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PRELOAD = ["searchengine.cli", "searchengine.engine", "indexer", "indexer.importer", "torch", "open_clip", "faiss",
           "PIL.Image", "sqlalchemy", "tests.support.crashkit"]

# -- launching ------------------------------------------------------------------------------


def _child(argv: list[str], env: dict[str, str], log: str, fsize: int | None) -> None:
    """The forked command: the environment, output and limits of a fresh process, then the CLI."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _limit(fsize)
    from searchengine.cli import app

    app(args=argv, prog_name="searchengine")


def _warm() -> None:
    pass


def _limit(fsize: int | None) -> None:
    """Cap the size of any file the process writes; SIGXFSZ ignored so writes fail with EFBIG."""
    if fsize is not None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


class Proc(Protocol):
    pid: int

    def poll(self) -> int | None: ...
    def kill(self) -> None: ...
    def wait(self, timeout: float) -> int: ...


class _Forked:
    def __init__(self, process) -> None:
        self._p = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self._p.exitcode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        self._p.join(timeout)
        if self._p.exitcode is None:
            self.kill()
            self._p.join()
            raise TimeoutError(f"the command ran past {timeout:.0f}s")
        return int(self._p.exitcode)


class _Spawned:
    def __init__(self, popen: subprocess.Popen) -> None:
        self._p = popen
        self.pid = popen.pid

    def poll(self) -> int | None:
        return self._p.poll()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        try:
            return self._p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._p.wait()
            raise TimeoutError(f"the command ran past {timeout:.0f}s") from None


class Launcher:
    """Starts ``searchengine`` commands: ``fork`` (from a pre-imported server) or ``spawn``."""

    _ctx = None

    def __init__(self, mode: Literal["fork", "spawn"] = "fork") -> None:
        self.mode = mode
        if mode == "fork" and Launcher._ctx is None:
            import multiprocessing

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            Launcher._ctx = ctx
            proc = ctx.Process(target=_warm)  # starts the server: its imports do not count as a command's time
            proc.start()
            proc.join()

    def start(self, argv: list[str], env: dict[str, str], log: Path, fsize: int | None = None) -> Proc:
        env = dict(env, PYTHONPATH=str(REPO))
        if self.mode == "fork":
            proc = Launcher._ctx.Process(target=_child, args=(list(argv), env, str(log), fsize), daemon=True)
            proc.start()
            return _Forked(proc)
        out = open(log, "ab")
        try:
            popen = subprocess.Popen([sys.executable, "-m", "searchengine", *argv], env=env, cwd=REPO, stdout=out,
                                     stderr=subprocess.STDOUT, preexec_fn=lambda: _limit(fsize))
        finally:
            out.close()
        return _Spawned(popen)

    def run(self, argv: list[str], env: dict[str, str], log: Path, fsize: int | None = None,
            timeout: float = 600) -> tuple[int, str]:
        """Run to the end; returns (exit code, output)."""
        log.unlink(missing_ok=True)
        rc = self.start(argv, env, log, fsize).wait(timeout)
        return rc, log.read_text(errors="replace") if log.exists() else ""


# -- reading the store ------------------------------------------------------------------------


def _connect(db: Path, readonly: bool) -> sqlite3.Connection | None:
    if not db.exists():
        return None
    uri = f"file:{db}?mode=ro" if readonly else f"file:{db}"
    return sqlite3.connect(uri, uri=True, timeout=30)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


@dataclass
class Snapshot:
    """Committed rows of one collection: image path -> id, product key -> id."""

    images: dict[str, int] = field(default_factory=dict)
    products: dict[str, int] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.images) + len(self.products)


def snapshot(db: Path, collection: str, readonly: bool = True) -> Snapshot:
    """The rows a reader sees now (only committed transactions are visible to it)."""
    snap = Snapshot()
    try:
        conn = _connect(db, readonly)
    except sqlite3.OperationalError:
        return snap
    if conn is None:
        return snap
    try:
        if not _has_table(conn, "images"):
            return snap
        rows = conn.execute("SELECT i.path, i.id FROM images i JOIN collections c ON c.id = i.collection_id "
                            "WHERE c.name = ?", (collection,)).fetchall()
        prods = conn.execute("SELECT p.product_key, p.id FROM products p JOIN collections c ON c.id = p.collection_id "
                             "WHERE c.name = ?", (collection,)).fetchall() if _has_table(conn, "products") else []
    except sqlite3.OperationalError:
        return snap  # the schema is being created
    finally:
        conn.close()
    snap.images, snap.products = dict(rows), dict(prods)
    snap.duplicates = [f"image {p}" for p in _dupes([p for p, _ in rows])] + [f"product {k}" for k in _dupes([k for k, _ in prods])]
    return snap


def _dupes(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if x in seen or seen.add(x)]


def _count(db: Path, read: Callable[[sqlite3.Connection], int]) -> int:
    """``read`` on a read-only connection to ``db``; 0 before the schema exists."""
    try:
        conn = _connect(db, True)
        if conn is None:
            return 0
        try:
            return int(read(conn))
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def row_count(db: Path) -> int:
    """Images + products committed so far (0 before the schema exists)."""

    def read(conn: sqlite3.Connection) -> int:
        n = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        if _has_table(conn, "products"):
            n += conn.execute("SELECT count(*) FROM products").fetchone()[0]
        return n

    return _count(db, read)


def commits(db: Path) -> int:
    """Write transactions committed so far (the collections' sequence numbers: one per batch)."""
    return _count(db, lambda conn: conn.execute("SELECT coalesce(sum(next_seq), 0) FROM collections").fetchone()[0])


def integrity_problems(db: Path) -> list[str]:
    conn = _connect(db, False)
    if conn is None:
        return []
    try:
        result = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        problems = [] if result == ["ok"] else [f"integrity_check: {'; '.join(result[:5])}"]
        fks = conn.execute("PRAGMA foreign_key_check").fetchall()
        if fks:
            problems.append(f"foreign_key_check: {len(fks)} rows, e.g. {fks[:3]}")
        return problems
    finally:
        conn.close()


# -- workloads --------------------------------------------------------------------------------


@dataclass
class Workload:
    """One command over one data directory, and what its finished run must hold."""

    command: str
    argv: list[str]
    home: Path
    collection: str = "default"
    env: dict[str, str] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)  # image paths the finished run holds
    products: set[str] = field(default_factory=set)  # product keys the finished run holds
    gone: set[str] = field(default_factory=set)  # paths/keys the workload removed: they may vanish
    renamed: dict[str, str] = field(default_factory=dict)  # old path -> new path (keeps its id)
    next_argv: Callable[[int], list[str]] | None = None  # per-cycle arguments (rebuild-index factories)
    rows: list[dict] = field(default_factory=list)  # the catalog's rows (import)
    batch_size: int = 4  # images per commit

    @property
    def db(self) -> Path:
        return self.home / "searchengine.db"

    @property
    def collection_dir(self) -> Path:
        from searchengine.config import Settings

        return Settings.from_env(collection=self.collection, data_dir=self.home).collection_dir

    @property
    def total(self) -> int:
        return len(self.files) + len(self.products)

    def full_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SEARCHENGINE_")}
        return dict(base, HF_HUB_OFFLINE="1", SEARCHENGINE_HOME=str(self.home), SEARCHENGINE_WORKERS="0",
                    SEARCHENGINE_DEVICE="cpu", **self.env)


# -- one cycle ------------------------------------------------------------------------------


@dataclass
class CycleResult:
    cycle: int
    trigger: str
    killed: bool
    exit_code: int | None
    rows_before: int
    rows_after: int
    seconds: float
    lost: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rebuilt: bool = False  # the index file was not usable after the kill: rebuilt from the store


class _RebuildLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class CrashRun:
    """Kill cycles over one workload; ``committed`` grows with every snapshot."""

    def __init__(self, workload: Workload, launcher: Launcher, rng: np.random.Generator, *,
                 estimate: float = 3.0, log_dir: Path | None = None, max_jitter: float = 0.15) -> None:
        self.w = workload
        self.launcher = launcher
        self.rng = rng
        self.estimate = estimate  # seconds a run is expected to take (rebuild-index: measured by calibrate)
        self.startup = 1.0  # seconds before a command writes its first row (fork server)
        self.commit_seconds = 0.02  # seconds a batch takes (learned from the commit-triggered kills)
        self.max_jitter = max_jitter  # the most a commit-triggered kill waits after its commit
        self.log_dir = log_dir or workload.home.parent
        self.committed = Snapshot()
        self.results: list[CycleResult] = []

    def reset(self, home: Path) -> None:
        """Go on with a fresh data directory (a new collection over the same files)."""
        self.w.home = home.resolve()
        self.committed = Snapshot()
        self.w.gone.clear()
        self.w.renamed.clear()

    # -- a kill cycle ----------------------------------------------------------------------
    def cycle(self, n: int, mode: Literal["rows", "time"] | None = None, remaining: int = 1) -> CycleResult:
        w = self.w
        mode = mode or ("time" if w.command == "rebuild-index" or self.rng.random() < 0.3 else "rows")
        argv = w.next_argv(n) if w.next_argv else w.argv
        before = row_count(w.db)
        log = self.log_dir / f"cycle-{n}.log"
        log.unlink(missing_ok=True)
        now = snapshot(w.db, w.collection)
        pending = len(w.files - set(now.images)) + len(w.products - set(now.products))
        batches = -(-max(pending, 1) // w.batch_size) + 1  # commits the rest of the work takes, about
        seq0 = commits(w.db)
        if mode == "rows":
            # spread the kills over what is left; the round's last kill may aim at the end (the final
            # writes and the index save)
            step = int(self.rng.integers(1, max(2, 2 * batches // (remaining + 1)) + 1))
            target = seq0 + (batches if remaining == 1 and self.rng.random() < 0.5 else min(step, batches))
            frac = float(self.rng.uniform(0, 1))  # how far into the next batch: a fraction of its time
        else:
            expected = self.estimate if w.command == "rebuild-index" else self.startup + batches * self.commit_seconds
            delay = float(self.rng.uniform(0, expected * (1 if w.command == "rebuild-index" else 2 / (remaining + 1))))
            trigger = f"after {delay:.2f}s"
        started = time.monotonic()
        proc = self.launcher.start(argv, w.full_env(), log)
        deadline = started + 300
        if mode == "rows":
            first = None
            while proc.poll() is None and (seq := commits(w.db)) < target and time.monotonic() < deadline:
                if first is None and seq > seq0:
                    first = time.monotonic() - started
                time.sleep(0.003)
            if first is not None and target - seq0 > 2:  # learn the pace (for the time triggers, and the jitter)
                self.startup = first
                self.commit_seconds = (time.monotonic() - started - first) / (target - seq0 - 1)
            # within the batch after the target commit: a fixed jitter would overshoot the whole run
            # when batches are fast (a few ms each with the tiny model on a quiet machine)
            jitter = frac * min(self.max_jitter, self.commit_seconds)
            trigger = f"commit {target - seq0}/{batches}+{jitter * 1000:.0f}ms"
            _sleep_while_running(proc, jitter)
        else:
            _sleep_while_running(proc, delay)
        seen = snapshot(w.db, w.collection)  # committed before the kill: a reader saw it
        killed = proc.poll() is None
        proc.kill()
        rc = proc.wait(60)
        seconds = time.monotonic() - started
        res = CycleResult(n, trigger, killed, None if killed else rc, before, 0, seconds)
        if not killed and rc != 0:
            res.failures.append(f"exited {rc} before the kill: {_tail(log)}")
        self._check(res, seen)
        self.results.append(res)
        return res

    # -- the final, uninterrupted run -------------------------------------------------------
    def finish(self, n: int) -> CycleResult:
        w = self.w
        log = self.log_dir / f"final-{n}.log"
        started = time.monotonic()
        rc, out = self.launcher.run(w.argv, w.full_env(), log)
        seconds = time.monotonic() - started
        self.estimate = max(self.estimate, seconds)
        res = CycleResult(n, "uninterrupted", False, rc, 0, 0, seconds)
        if rc != 0 or "Traceback" in out:
            res.failures.append(f"the uninterrupted run exited {rc}: {out[-800:]}")
        self._check(res, Snapshot(), final=True)
        self.results.append(res)
        return res

    # -- checks ----------------------------------------------------------------------------
    def _check(self, res: CycleResult, seen: Snapshot, final: bool = False) -> None:
        w = self.w
        res.failures += integrity_problems(w.db)
        after = snapshot(w.db, w.collection, readonly=False)
        res.rows_after = after.size
        res.failures += [f"duplicate {d}" for d in after.duplicates]
        for kind, old, now in (("image", {**self.committed.images, **seen.images}, after.images),
                               ("product", {**self.committed.products, **seen.products}, after.products)):
            for key, ident in old.items():
                if key in w.gone or key in w.renamed:
                    continue
                if now.get(key) != ident:
                    res.lost.append(f"{kind} {key} (id {ident}) is {'gone' if key not in now else f'id {now[key]}'}")
        for old, new in w.renamed.items():
            if final and old in self.committed.images and after.images.get(new) != self.committed.images[old]:
                res.lost.append(f"renamed {old} -> {new} did not keep id {self.committed.images[old]}")
        self.committed.images.update(after.images)
        self.committed.products.update(after.products)
        if after.size or final:
            res.failures += self._engine_checks(final, res)
        temps = _temp_files(w)
        if final and temps:
            res.failures.append(f"temp files left after a completed run: {[t.name for t in temps]}")
        elif len(temps) > 2:
            res.failures.append(f"temp files pile up: {[t.name for t in temps]}")
        if final:
            if set(after.images) != w.files:
                missing, extra = w.files - set(after.images), set(after.images) - w.files
                res.failures.append(f"files: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                                    f"{len(extra)} extra (e.g. {sorted(extra)[:3]})")
            if set(after.products) != w.products:
                res.failures.append(f"products: {sorted(set(after.products) ^ w.products)[:5]} differ")

    def _engine_checks(self, final: bool, res: CycleResult) -> list[str]:
        from searchengine import SearchEngine
        from searchengine.errors import CollectionNotFoundError, SearchEngineError
        from searchengine.index import VectorIndex, normalize_factory

        w = self.w
        problems: list[str] = []
        handler = _RebuildLog()
        logger = logging.getLogger("searchengine")
        logger.addHandler(handler)
        try:
            with SearchEngine.open(w.collection, data_dir=w.home, writable=False) as engine:
                cid = engine.collection.id
                for kind, index in (("images", engine.index), ("texts", engine.text_index)):
                    ids, live = np.sort(index.ids()), np.sort(engine.store.live_ids(cid, kind))
                    if not np.array_equal(ids, live):
                        problems.append(f"{kind} index ids != live rows after reconcile: "
                                        f"{len(np.setdiff1d(live, ids))} missing, {len(np.setdiff1d(ids, live))} stale")
                factory = engine.collection.index_factory
                if factory != "auto":
                    want = VectorIndex.create(normalize_factory(factory), engine.collection.dim).inner_type
                    if engine.index.inner_type != want:
                        problems.append(f"the {factory} collection loaded an {engine.index.inner_type} index")
                if final:
                    rec = engine.collection
                    try:
                        VectorIndex.load(engine.index_path, rec.index_factory, rec.dim, checksum=rec.index_checksum)
                    except SearchEngineError as exc:
                        problems.append(f"the finished run's index file does not load as written: {exc}")
                    hits = engine.search_text("a photo", k=5)
                    live = set(engine.store.live_ids(cid).tolist())
                    if not hits or any(h.id not in live for h in hits):
                        problems.append(f"search returned {len(hits)} hits, ids {[h.id for h in hits]}")
        except CollectionNotFoundError:
            if res.rows_after:
                problems.append("rows exist but the collection does not open")
        except Exception as exc:  # noqa: BLE001 - any failure to open is a finding, reported with its type
            problems.append(f"the engine does not open: {type(exc).__name__}: {exc}")
        finally:
            logger.removeHandler(handler)
        res.rebuilt = any("rebuilding it from the store" in m for m in handler.messages)
        if final and res.rebuilt:
            problems.append(f"a completed run left an index that is rebuilt on open: {handler.messages}")
        return problems


def _temp_files(w: Workload) -> list[Path]:
    folder = w.collection_dir
    return sorted(folder.glob(".*.tmp")) if folder.exists() else []


def _sleep_while_running(proc: Proc, seconds: float) -> None:
    end = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.002)


def _tail(log: Path, n: int = 600) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


# -- summaries --------------------------------------------------------------------------------


@dataclass
class Summary:
    command: str
    cycles: int = 0
    killed: int = 0
    finished_first: int = 0
    rebuilt: int = 0
    final_runs: int = 0
    lost: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, res: CycleResult) -> None:
        if res.trigger == "uninterrupted":
            self.final_runs += 1
        else:
            self.cycles += 1
            self.killed += res.killed
            self.finished_first += not res.killed
        self.rebuilt += res.rebuilt
        self.lost += [f"cycle {res.cycle}: {x}" for x in res.lost]
        self.failures += [f"cycle {res.cycle} ({res.trigger}): {x}" for x in res.failures]

    @property
    def ok(self) -> bool:
        return not self.lost and not self.failures


# -- workload builders ----------------------------------------------------------------------------


def index_workload(root: Path, model: str, images: int, seed: int = 0, batch_size: int = 4) -> Workload:
    """A folder of ``images`` small distinct photos and the ``index`` command over it."""
    from tests.support import imagegen

    folder = (root / "photos").resolve()
    files = {str(imagegen.photo(folder / f"p{i:04d}.jpg", seed=seed * 100_000 + i)) for i in range(images)}
    argv = ["index", str(folder), "--model", model, "--batch-size", str(batch_size), "--workers", "0", "--json"]
    return Workload("index", argv, (root / "home").resolve(), files=files, batch_size=batch_size)


def churn_folder(w: Workload, rng: np.random.Generator, k: int, seed: int) -> None:
    """Between rounds: remove, rename, rewrite and add ``k`` files each."""
    from tests.support import imagegen

    folder = Path(w.argv[1])
    pick = [Path(p) for p in rng.choice(sorted(w.files), size=3 * k, replace=False)]
    for p in pick[:k]:
        p.unlink()
        w.files.discard(str(p))
        w.gone.add(str(p))
    for p in pick[k : 2 * k]:
        new = p.with_name(f"moved-{seed}-{p.name}")
        p.rename(new)
        w.files.discard(str(p))
        w.files.add(str(new))
        w.renamed[str(p)] = str(new)
    for i, p in enumerate(pick[2 * k :]):
        imagegen.photo(p, seed=10_000_000 + seed * 1000 + i)  # new content at the same path keeps the id
    for i in range(k):
        w.files.add(str(imagegen.photo(folder / f"new-{seed}-{i}.jpg", seed=20_000_000 + seed * 1000 + i)))


def import_workload(root: Path, model: str, products: int, seed: int = 0, batch_size: int = 4) -> Workload:
    """A JSON Lines catalog of ``products`` rows (every fifth with two images) over local files."""
    w = Workload("import", [], (root / "home").resolve(), env={"SEARCHENGINE_BATCH_SIZE": str(batch_size)},
                 batch_size=batch_size)
    catalog = (root / "catalog.jsonl").resolve()
    w.argv = ["import", str(catalog), "--model", model, "--json"]
    w.rows = [_product(root, i, seed) for i in range(products)]
    _write_catalog(w, catalog)
    return w


def _product(root: Path, i: int, seed: int, version: int = 0) -> dict:
    from tests.support import imagegen

    folder = (root / "images").resolve()
    paths = [str(imagegen.photo(folder / f"sku{i:04d}-{j}.jpg", seed=seed * 100_000 + 10 * i + j))
             for j in range(2 if i % 5 == 0 else 1)]
    return {"id": f"sku{i:04d}", "images": paths, "title": f"product {i} v{version}",
            "category": ["shoes", "bags", "hats"][i % 3], "price": 10 + i}


def _write_catalog(w: Workload, catalog: Path) -> None:
    import json

    rows = w.rows
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    w.products = {r["id"] for r in rows}
    w.files = {p for r in rows for p in r["images"]}


def churn_catalog(w: Workload, rng: np.random.Generator, k: int, seed: int) -> None:
    """Between rounds: drop ``k`` rows (their products and images go), retitle ``k``, add ``k``."""
    root = Path(w.argv[1]).parent
    rows = w.rows
    order = rng.permutation(len(rows))
    dropped = {int(i) for i in order[:k]}
    for i in dropped:
        w.gone.add(rows[i]["id"])
        w.gone.update(rows[i]["images"])
    for i in order[k : 2 * k]:
        rows[int(i)]["title"] += f" (edited {seed})"
    start = max(int(r["id"][3:]) for r in rows) + 1
    w.rows = [r for i, r in enumerate(rows) if i not in dropped] + [
        _product(root, start + j, seed) for j in range(k)]
    _write_catalog(w, Path(w.argv[1]))


REBUILD_FACTORIES = ["Flat", "HNSW16", "auto", "IVF4,Flat"]


def rebuild_workload(root: Path, model: str, images: int, launcher: Launcher, seed: int = 0) -> Workload:
    """A collection indexed once (uninterrupted), and ``rebuild-index`` cycling through factories."""
    w = index_workload(root, model, images, seed, batch_size=32)
    rc, out = launcher.run(w.argv, w.full_env(), root / "setup.log")
    if rc != 0:
        raise RuntimeError(f"indexing the rebuild workload failed ({rc}): {out[-800:]}")
    w.command = "rebuild-index"
    w.argv = ["rebuild-index", "--index-factory", "Flat", "--json"]
    w.next_argv = lambda n: ["rebuild-index", "--index-factory", REBUILD_FACTORIES[n % len(REBUILD_FACTORIES)], "--json"]
    return w


def calibrate(run: CrashRun) -> float:
    """Time one uninterrupted run of the workload's command (rebuild-index: nothing to lose)."""
    log = run.log_dir / "calibrate.log"
    started = time.monotonic()
    rc, out = run.launcher.run(run.w.argv, run.w.full_env(), log)
    if rc != 0:
        raise RuntimeError(f"calibration run failed ({rc}): {out[-800:]}")
    run.estimate = time.monotonic() - started
    return run.estimate
