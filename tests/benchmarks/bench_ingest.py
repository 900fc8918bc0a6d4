"""Ingestion benchmark: decode only, encode only and the whole ``index`` run, per model, with
``clip-retrieval inference`` side by side on the same folder.

    python data/fetch.py wallpapers opencv-samples && python data/make_photo_corpus.py --count 3000
    python tests/benchmarks/bench_ingest.py --json test-artifacts/bench_ingest.json

The corpus (``--corpus``, default ``data/cache/bench-photos``) is made of hard links to the real
wallpapers and opencv samples plus the generated web-sized photos (``--web N`` of them). Models
(``--models``): ``vit-b-32`` and ``mobileclip2-s0`` are open_clip architectures with seeded random
weights written by ``data/random_model.py`` (speed does not depend on the weight values), and
``lite``. For each model:

* ``decode``: the decode workers alone (read, hash, JPEG draft decode, the model's resize/crop).
* ``encode``: the model alone on already-decoded images, ``--batch-size`` per call.
* ``cosine``: embeddings at the precision in use against fp32 on those real images (min, mean).
* ``index``: ``searchengine index`` as a fresh process into an empty data directory: images/s
  over the indexing itself (``steady``) and over the whole command, start-up included (``wall``).

``clip-retrieval`` (``--clip-retrieval VENV``, default ``.venv-cr``; see clip_retrieval_notes.md
for its own virtual environment) indexes the same folder with the same ViT-B-32 weights, batch size
and decode worker count; its ``stats/0.json`` gives its steady rate. Prints a table; ``--json``
writes every figure. Run on demand, never in the default test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SEARCHENGINE_DATA_CACHE") or ROOT / "data" / "cache")
RANDOM_MODELS = {"vit-b-32": "ViT-B-32", "mobileclip2-s0": "MobileCLIP2-S0"}


def model_spec(name: str) -> str:
    if name == "lite":
        return "lite"
    arch = RANDOM_MODELS[name]
    folder = CACHE / "models" / f"{name}-random"
    if not (folder / "open_clip_model.safetensors").is_file():
        subprocess.run([sys.executable, str(ROOT / "data" / "random_model.py"), arch, str(folder)], check=True)
    return f"local-dir:{folder}"


def build_corpus(corpus: Path, web: int) -> int:
    """Hard links (copies across file systems) of the real photos and the first ``web`` generated ones."""
    sources = {"wallpapers": CACHE / "wallpapers", "opencv": CACHE / "opencv-samples"}
    web_files = sorted((CACHE / "photos-web").rglob("*.jpg"))[:web]
    if len(web_files) < web:
        raise SystemExit(f"only {len(web_files)} generated photos; run: python data/make_photo_corpus.py --count {web}")
    wanted: dict[Path, Path] = {}
    for name, folder in sources.items():
        if not folder.is_dir():
            raise SystemExit(f"{folder} is missing; run: python data/fetch.py wallpapers opencv-samples")
        for f in folder.rglob("*"):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png") and f.is_file():
                wanted[corpus / name / f.relative_to(folder)] = f
    for f in web_files:
        wanted[corpus / "web" / f.name] = f
    existing = {p for p in corpus.rglob("*") if p.is_file()} if corpus.is_dir() else set()
    for stale in existing - set(wanted):
        stale.unlink()
    for dst, src in wanted.items():
        if dst not in existing:
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                dst.write_bytes(src.read_bytes())
    return len(wanted)


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def measure_stages(spec: str, corpus: Path, batch_size: int, workers: int, sample: int) -> dict:
    """Decode-only and encode-only rates, and the cosine of the precision in use against fp32."""
    import numpy as np

    from indexer.pipeline import DecodeOptions, decode_all
    from indexer.scan import scan
    from searchengine.imaging import image_extensions
    from searchengine.models.clip import load_encoder

    enc = load_encoder(spec, "cpu")
    entries = scan([str(corpus)], image_extensions()).files
    options = DecodeOptions(pil_stage=enc.pil_stage, known_hashes=frozenset(), max_pixels=100_000_000,
                            draft_size=enc.image_size)
    started = time.perf_counter()
    pixels = []
    for d in decode_all(entries, options, workers):
        if d.pixels is not None and len(pixels) < sample:
            pixels.append(d.pixels)
    decode_s = time.perf_counter() - started

    def encode_all():
        return np.concatenate([enc.encode_pixels(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])

    encode_all()  # warm-up (oneDNN builds its kernels on first use of each shape)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        vectors = encode_all()
        times.append(time.perf_counter() - t)
    out = {"precision": enc.precision, "precision_note": enc.precision_note, "image_size": enc.image_size,
           "decode_images_per_s": round(len(entries) / decode_s, 1),
           "encode_images_per_s": round(len(pixels) / statistics.median(times), 1)}
    if enc.precision != "fp32":
        ref = load_encoder(spec, "cpu", "fp32")
        full = np.concatenate([ref.encode_pixels(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])
        cos = np.sum(vectors * full, axis=1)
        out.update(cosine_to_fp32_min=round(float(cos.min()), 5), cosine_to_fp32_mean=round(float(cos.mean()), 5))
    return out


def run_index(spec: str, corpus: Path, batch_size: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "searchengine", "index", str(corpus), "--model", spec,
                               "--data-dir", home, "--batch-size", str(batch_size), "--workers", str(workers), "--json"],
                              capture_output=True, text=True, env=_env(), cwd=ROOT)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"searchengine index failed:\n{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    done = report["encoded"]
    return {"images": done, "failed": report["failed"], "seconds": round(report["seconds"], 2),
            "steady_images_per_s": round(done / report["seconds"], 1), "wall_seconds": round(wall, 2),
            "wall_images_per_s": round(done / wall, 1)}


def run_clip_retrieval(venv: Path, spec: str, corpus: Path, batch_size: int, workers: int) -> dict:
    weights = Path(spec.partition(":")[2]) / "open_clip_model.safetensors"
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        proc = subprocess.run([str(venv / "bin" / "clip-retrieval"), "inference", "--input_dataset", str(corpus),
                               "--output_folder", out, "--input_format", "files",
                               "--clip_model", f"open_clip:ViT-B-32/{weights}", "--batch_size", str(batch_size),
                               "--num_prepro_workers", str(workers), "--enable_text", "False",
                               "--enable_metadata", "False", "--use_jit", "False"],
                              capture_output=True, text=True, env=_env())
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"clip-retrieval failed:\n{proc.stderr[-2000:]}")
        stats = json.loads((Path(out) / "stats" / "0.json").read_text())
        import numpy as np

        rows = sum(np.load(f, mmap_mode="r").shape[0] for f in (Path(out) / "img_emb").glob("*.npy"))
    done = stats["sample_count"]
    return {"images": done, "embeddings": int(rows), "seconds": round(stats["total_duration"], 2),
            "steady_images_per_s": round(done / stats["total_duration"], 1),
            "read_seconds": round(stats["read_duration"], 2), "inference_seconds": round(stats["inference_duration"], 2),
            "wall_seconds": round(wall, 2), "wall_images_per_s": round(done / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit-b-32,lite,mobileclip2-s0")
    parser.add_argument("--corpus", type=Path, default=CACHE / "bench-photos")
    parser.add_argument("--web", type=int, default=3000, help="generated web-sized photos in the corpus")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample", type=int, default=256, help="decoded images the encode-only rate uses")
    parser.add_argument("--clip-retrieval", type=Path, default=ROOT / ".venv-cr", help="its venv; 'none' to skip")
    parser.add_argument("--skip", default="", help="comma list of stages to skip: decode,index")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch

    files = build_corpus(args.corpus, args.web)
    results = {"corpus": str(args.corpus), "files": files, "batch_size": args.batch_size, "workers": args.workers,
               "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
               "processor": _cpu_name(), "torch": torch.__version__, "models": {}}
    for name in filter(None, args.models.split(",")):
        spec = model_spec(name)
        row = results["models"][name] = {"spec": spec}
        if "decode" not in skip:
            row.update(measure_stages(spec, args.corpus, args.batch_size, args.workers, args.sample))
        if "index" not in skip:
            row["index"] = run_index(spec, args.corpus, args.batch_size, args.workers)
        print(json.dumps({name: row}), file=sys.stderr)
    venv = args.clip_retrieval
    if str(venv) != "none" and "vit-b-32" in results["models"]:
        if not (venv / "bin" / "clip-retrieval").is_file():
            raise SystemExit(f"no clip-retrieval in {venv}; see tests/benchmarks/clip_retrieval_notes.md (or --clip-retrieval none)")
        cr = results["clip_retrieval"] = run_clip_retrieval(venv, results["models"]["vit-b-32"]["spec"], args.corpus,
                                                            args.batch_size, args.workers)
        ours = results["models"]["vit-b-32"].get("index")
        if ours:
            results["vit_b_32_vs_clip_retrieval"] = {
                "steady": round(ours["steady_images_per_s"] / cr["steady_images_per_s"], 2),
                "wall": round(ours["wall_images_per_s"] / cr["wall_images_per_s"], 2)}
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(results: dict) -> None:
    print(f"{results['files']} files in {results['corpus']}; batch {results['batch_size']}, {results['workers']} decode "
          f"workers, {results['torch_threads']} torch threads, {results['cpus']} CPUs ({results['processor']})")
    print(f"{'model':<16}{'precision':<10}{'decode/s':>10}{'encode/s':>10}{'cos min':>9}{'index/s':>9}{'wall/s':>8}")
    for name, r in results["models"].items():
        idx = r.get("index", {})
        print(f"{name:<16}{r.get('precision', ''):<10}{r.get('decode_images_per_s', ''):>10}"
              f"{r.get('encode_images_per_s', ''):>10}{r.get('cosine_to_fp32_min', ''):>9}"
              f"{idx.get('steady_images_per_s', ''):>9}{idx.get('wall_images_per_s', ''):>8}")
    cr = results.get("clip_retrieval")
    if cr:
        print(f"{'clip-retrieval':<16}{'fp32':<10}{'':>10}{'':>10}{'':>9}{cr['steady_images_per_s']:>9}"
              f"{cr['wall_images_per_s']:>8}")
        ratio = results.get("vit_b_32_vs_clip_retrieval")
        if ratio:
            print(f"ViT-B-32: searchengine / clip-retrieval = {ratio['steady']}x (indexing), {ratio['wall']}x (whole command)")


if __name__ == "__main__":
    main()
