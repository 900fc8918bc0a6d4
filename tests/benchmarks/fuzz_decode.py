"""Bounded fuzz run of the image decoder entry points (on demand; not part of the default tests).

Feeds mutated bytes of valid JPEG, PNG, GIF, WebP, TIFF, BMP and MPO seeds (bit flips, byte
overwrites with interesting values, cuts, splices, duplicated and deleted chunks, header fields
set to huge values) into

1. ``safe_open`` in this process: it must return a fully loaded RGB image with a positive size,
   or raise ``ImageDecodeError``; any other exception is a finding (its input is saved). A
   watchdog ends the run with a traceback if one input takes longer than ``--hang-seconds``
   (the input is in ``last-input.bin``); a native crash ends it the same way.
2. the indexer's ``decode_one`` in worker processes (``decode_all`` with its timeout and
   memory limit): every file must come back decoded or with a per-file error; "crashed",
   "timed out" and "out of memory" errors are findings.

With ``--engine atheris`` (when atheris is installed) stage 1 is driven by libFuzzer with
coverage of Pillow's Python plugins instead of the random mutator.

    python tests/benchmarks/fuzz_decode.py --seconds 60
    python tests/benchmarks/fuzz_decode.py --examples 20000 --pipeline-files 500
    python tests/benchmarks/fuzz_decode.py --engine atheris --seconds 120
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image  # noqa: E402

from searchengine.errors import ImageDecodeError  # noqa: E402
from searchengine.imaging import safe_open  # noqa: E402
from tests.support import imagegen  # noqa: E402

MAX_PIXELS = 20_000_000  # smaller than the default: big declared sizes are refused, not decoded
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x40]
INTERESTING_32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000, 65500]


def seeds(folder: Path) -> dict[str, bytes]:
    """Small valid files of every allowed format and of the odd variants the decoders branch on."""
    makers = {
        "photo.jpg": lambda p: imagegen.photo(p, seed=1, size=(24, 16)),
        "progressive.jpg": lambda p: _progressive(p),
        "exif6.jpg": lambda p: imagegen.exif_rotated_jpeg(p, 6, size=(16, 8)),
        "cmyk.jpg": lambda p: imagegen.cmyk_jpeg(p, size=(12, 8)),
        "icc.jpg": lambda p: imagegen.icc_jpeg(p, size=(12, 8)),
        "mpo.jpg": lambda p: imagegen.mpo(p),
        "photo.png": lambda p: imagegen.photo(p, seed=2, size=(24, 16)),
        "sixteen.png": lambda p: imagegen.png16(p, size=(16, 4)),
        "palette.png": lambda p: imagegen.palette_alpha_png(p),
        "rgba.png": lambda p: imagegen.rgba_png(p),
        "anim.gif": lambda p: imagegen.animated_gif(p, size=(8, 8)),
        "photo.gif": lambda p: imagegen.photo(p, seed=3, size=(24, 16)),
        "photo.webp": lambda p: imagegen.webp(p, size=(24, 16)),
        "anim.webp": lambda p: imagegen.animated_webp(p, size=(8, 8)),
        "photo.tif": lambda p: imagegen.tiff(p, size=(24, 16)),
        "photo.bmp": lambda p: imagegen.bmp(p, size=(12, 8)),
    }
    return {name: make(folder / name).read_bytes() for name, make in makers.items()}


def _progressive(path: Path) -> Path:
    imagegen.photo_image(4, (24, 16)).save(path, format="JPEG", progressive=True, quality=80)
    return path


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """One to eight random edits of ``data`` (AFL-style havoc)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(8)
        if not buf:
            buf = bytearray(rng.choice(corpus))
        i = rng.randrange(len(buf))
        if op == 0:  # flip one bit
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting byte
            buf[i] = rng.choice(INTERESTING)
        elif op == 2:  # a random byte
            buf[i] = rng.randrange(256)
        elif op == 3 and len(buf) > 4:  # an interesting 32-bit value (sizes, offsets, lengths)
            i = min(i, len(buf) - 4)
            buf[i : i + 4] = rng.choice(INTERESTING_32).to_bytes(4, rng.choice(["big", "little"]))
        elif op == 4:  # cut the tail
            del buf[rng.randrange(len(buf)) :]
        elif op == 5:  # delete a chunk
            del buf[i : i + rng.randint(1, 64)]
        elif op == 6:  # duplicate a chunk
            j = rng.randrange(len(buf))
            buf[j:j] = buf[i : i + rng.randint(1, 64)]
        else:  # splice in part of another seed
            other = rng.choice(corpus)
            k = rng.randrange(len(other))
            buf[i : i + rng.randint(1, 64)] = other[k : k + rng.randint(1, 64)]
    return bytes(buf)


class Stage1:
    """safe_open on one input: RGB image or ImageDecodeError; anything else is recorded."""

    def __init__(self, out: Path, hang_seconds: float) -> None:
        self.out, self.hang = out, hang_seconds
        self.counts: collections.Counter[str] = collections.Counter()
        self.findings: list[tuple[str, Path]] = []
        self.last = out / "last-input.bin"
        self.deadline: float | None = None  # atheris: print the summary and leave at this time
        self.started = time.monotonic()

    def __call__(self, data: bytes) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            sys.stdout.flush()
            os._exit(_finish(self, time.monotonic() - self.started, sum(self.counts.values()), self.last.parent, None))
        self.last.write_bytes(data)  # what a native crash or a hang leaves behind
        faulthandler.dump_traceback_later(self.hang, exit=True)
        draft = 16 if len(data) % 2 else None
        try:
            image = safe_open(data, max_pixels=MAX_PIXELS, draft_size=draft)
        except ImageDecodeError as exc:
            self.counts["ImageDecodeError: " + str(exc).split(":")[0][:40]] += 1
        except Exception as exc:  # noqa: BLE001 - every other exception is what we look for
            name = f"{type(exc).__name__}: {exc}"[:120]
            path = self.out / f"finding-{len(self.findings)}.bin"
            path.write_bytes(data)
            self.findings.append((name + "\n" + traceback.format_exc(limit=-4), path))
            self.counts["FINDING " + type(exc).__name__] += 1
        else:
            ok = image.mode == "RGB" and image.width > 0 and image.height > 0 and len(image.tobytes()) == (
                image.width * image.height * 3)
            self.counts["decoded RGB" if ok else "FINDING bad image"] += 1
            if not ok:
                path = self.out / f"finding-{len(self.findings)}.bin"
                path.write_bytes(data)
                self.findings.append((f"bad image {image.mode} {image.size}", path))
        finally:
            faulthandler.cancel_dump_traceback_later()


def run_random(stage: Stage1, corpus: list[bytes], seconds: float, examples: int, seed: int) -> int:
    rng = random.Random(seed)
    deadline, n = time.monotonic() + seconds, 0
    for data in corpus:
        stage(data)
        n += 1
    while n < examples and time.monotonic() < deadline:
        stage(mutate(rng.choice(corpus), rng, corpus))
        n += 1
    return n


def run_atheris(stage: Stage1, corpus_dir: Path, seconds: float, examples: int) -> None:
    """libFuzzer drives stage 1 with coverage of the Python code loaded (Pillow's plugins included);
    the C decoders are not instrumented, so their branches do not guide it."""
    import atheris

    atheris.instrument_all()
    args = [sys.argv[0], str(corpus_dir), f"-max_total_time={int(seconds) + 30}", f"-timeout={int(stage.hang)}",
            "-rss_limit_mb=4096", "-max_len=65536", "-print_final_stats=1"]
    if examples:
        args.append(f"-runs={examples}")
    stage.started = time.monotonic()
    stage.deadline = stage.started + seconds  # libFuzzer ends with exit(), past Python's atexit
    atheris.Setup(args, stage)
    atheris.Fuzz()


def run_pipeline(corpus: list[bytes], files: int, seed: int, folder: Path) -> collections.Counter[str]:
    """Mutated files through decode_all (2 workers, 10 s timeout, the default memory limit)."""
    from indexer.pipeline import DecodeOptions, decode_all
    from indexer.scan import FileEntry
    from searchengine.config import Settings

    rng = random.Random(seed + 1)
    entries = []
    for i in range(files):
        path = folder / f"f{i:05d}.bin"
        path.write_bytes(mutate(rng.choice(corpus), rng, corpus))
        st = path.stat()
        entries.append(FileEntry(str(path), st.st_size, st.st_mtime))
    options = DecodeOptions(pil_stage=lambda im: im.resize((16, 16)), known_hashes=frozenset(), max_pixels=MAX_PIXELS,
                            draft_size=16, timeout=10.0, memory_limit=Settings().decode_memory())
    counts: collections.Counter[str] = collections.Counter()
    for d in decode_all(entries, options, workers=2):
        if d.error is None:
            ok = d.pixels is not None and d.pixels.shape == (16, 16, 3) and d.width > 0 and d.height > 0
            counts["decoded" if ok else "FINDING bad result"] += 1
        elif any(w in d.error for w in ("crashed", "timed out", "out of memory")):
            counts["FINDING " + d.error] += 1
            shutil.copy(d.entry.path, folder.parent / ("pipeline-finding-" + Path(d.entry.path).name))
        else:
            counts["error: " + d.error.split(":")[0][:40]] += 1
    return counts


def report(title: str, counts: collections.Counter[str], n: int, seconds: float) -> None:
    print(f"{title}: {n} inputs in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f}/s)")
    for key, value in counts.most_common():
        print(f"  {value:7d}  {key}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time for stage 1")
    parser.add_argument("--examples", type=int, default=10**9, help="at most this many stage-1 inputs")
    parser.add_argument("--pipeline-files", type=int, default=300, help="mutated files through decode_all (stage 2)")
    parser.add_argument("--engine", choices=["random", "atheris"], default="random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=20.0, help="one stage-1 input longer than this is a hang")
    parser.add_argument("--out", type=Path, default=None, help="where findings go [default: a temporary folder]")
    args = parser.parse_args()
    Image.init()
    out = args.out or Path(tempfile.mkdtemp(prefix="fuzz-decode-"))
    out.mkdir(parents=True, exist_ok=True)
    corpus_dir = out / "seeds"
    corpus_dir.mkdir(exist_ok=True)
    corpus = list(seeds(corpus_dir).values())
    stage = Stage1(out, args.hang_seconds)
    started = time.monotonic()
    if args.engine == "atheris":
        run_atheris(stage, corpus_dir, args.seconds, args.examples if args.examples < 10**9 else 0)
        return 0
    n = run_random(stage, corpus, args.seconds, args.examples, args.seed)
    elapsed = time.monotonic() - started
    pipeline_counts = None
    if args.pipeline_files:
        folder = out / "pipeline"
        folder.mkdir(exist_ok=True)
        t = time.monotonic()
        pipeline_counts = (run_pipeline(corpus, args.pipeline_files, args.seed, folder), time.monotonic() - t)
        shutil.rmtree(folder)
    return _finish(stage, elapsed, n, out, pipeline_counts)


def _finish(stage: Stage1, elapsed: float, n: int, out: Path, pipeline_counts) -> int:
    report("safe_open", stage.counts, n, elapsed)
    bad = len(stage.findings)
    if pipeline_counts is not None:
        counts, seconds = pipeline_counts
        report("decode_one in worker processes", counts, sum(counts.values()), seconds)
        bad += sum(v for k, v in counts.items() if k.startswith("FINDING"))
    for text, path in stage.findings[:20]:
        print(f"\nfinding saved to {path}:\n{text}")
    stage.last.unlink(missing_ok=True)
    if not bad:
        shutil.rmtree(out / "seeds", ignore_errors=True)
        if not any(out.iterdir()):
            out.rmdir()
    print(f"\n{bad} findings" + (f" (inputs in {out})" if bad else ""), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
