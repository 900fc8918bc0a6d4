"""Cold load of an exported text tower: weights inline vs pre-optimised graph with external weights.

    python tests/benchmarks/bench_onnx_load.py --model ViT-B-32 --repeats 5
    python tests/benchmarks/bench_onnx_load.py --model tiny

Exports the text tower of the model (``ViT-B-32``: open_clip's architecture with random weights, no
download; ``tiny``: the tests' tiny model) twice: as ``torch.onnx.export`` writes it (weights inline
in the protobuf) and as :func:`searchengine.models.onnx_export.export_towers` installs it (graph
optimised once by ONNX Runtime, weights as external data). Then, interleaved, each variant runs in
a fresh Python process that imports onnxruntime, creates the session and encodes one query; the
child reports its import time (numpy, onnxruntime and, for ``OnnxTower``, this package's modules),
session creation, the query, and its peak RSS (VmHWM), the parent the whole wall time. Medians of ``--repeats`` runs. Files are warm in the page cache for every variant alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]

CHILD = """if True:
    import time; t0 = time.perf_counter()
    import json, sys
    import numpy as np
    import onnxruntime as ort
    variant, path, ids = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), dtype=np.int64)
    if variant.startswith("runtime"):
        from searchengine.models.onnx_runtime import OnnxTower
        t1 = time.perf_counter()
        tower = OnnxTower.load(path, "text", prepack=variant == "runtime")
        t2 = time.perf_counter()
        tower.encode_tokens(ids)
    else:
        t1 = time.perf_counter()
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, variant.split("/")[1])
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        t2 = time.perf_counter()
        session.run(None, {session.get_inputs()[0].name: ids})
    t3 = time.perf_counter()
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))  # ru_maxrss survives exec
    print(json.dumps({"import": t1 - t0, "session": t2 - t1, "query": t3 - t2, "rss_mb": int(hwm.split()[1]) / 1024}))
"""


def _encoder(model: str, work: Path):
    from searchengine.models.clip import ClipEncoder, load_encoder

    if model == "tiny":
        sys.path.insert(0, str(ROOT))
        from tests.support.tinymodel import make_tiny_model

        return load_encoder(make_tiny_model(work / "tiny"), "cpu", "fp32")
    import open_clip

    net, _, preprocess = open_clip.create_model_and_transforms(model)  # random weights: no download
    return ClipEncoder(f"{model} (random)", net.eval(), preprocess, open_clip.get_tokenizer(model), "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="tiny, or an open_clip architecture name")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from searchengine.models.onnx_export import _torch_export, export_towers, tower_module

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        enc = _encoder(args.model, work)
        print(f"model {enc.spec}: built in {time.perf_counter() - t:.1f} s")
        report = export_towers(enc, work / "export", towers=("text",))
        tr = report.towers["text"]
        print(f"export_towers: torch export {tr.export_s:.1f} s, optimise {tr.optimise_s:.1f} s, "
              f"verify {tr.verify_s:.1f} s, {tr.bytes / 1e6:.1f} MB, min cosine {tr.min_cosine:.7f}")
        module, example, names, axes = tower_module(enc, "text")
        _torch_export(module, example, names, axes, work / "inline.onnx", 17)
        ids = json.dumps(enc.tokenizer(["a flower"]).numpy().tolist())
        variants = {
            "inline, optimise at load (ORT_ENABLE_ALL)": ("inline/ORT_ENABLE_ALL", work / "inline.onnx"),
            "inline, no optimisation": ("inline/ORT_DISABLE_ALL", work / "inline.onnx"),
            "external + pre-optimised, bare ort": ("ext/ORT_DISABLE_ALL", work / "export" / "text.onnx"),
            "external + pre-optimised, OnnxTower.load": ("runtime", work / "export"),
            "  the same, prepack=False": ("runtime-noprepack", work / "export"),
        }
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (variant, path) in variants.items():
                t = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CHILD, variant, str(path), ids], capture_output=True,
                                     text=True, check=True, cwd=ROOT)
                row = json.loads(out.stdout)
                row["wall"] = time.perf_counter() - t
                runs[name].append(row)
    print(f"\n{args.model} text tower, fresh process, median of {args.repeats} (s; MB):")
    print(f"{'variant':45s} {'wall':>6s} {'import':>6s} {'session':>7s} {'query':>6s} {'rss':>6s}")
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{name:45s} {med['wall']:6.3f} {med['import']:6.3f} {med['session']:7.3f} {med['query']:6.3f} "
              f"{med['rss_mb']:6.0f}")


if __name__ == "__main__":
    main()
