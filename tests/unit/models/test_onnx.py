"""The ONNX backend: towers exported from the tiny open_clip model and the lite model match torch, the
meta says what was exported, a damaged, incomplete or stale export is refused, a failed verification
installs nothing, and the query side runs without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from searchengine.errors import ModelLoadError
from searchengine.models import onnx_export
from searchengine.models.clip import ClipEncoder, fingerprint_id, load_encoder
from searchengine.models.onnx_export import export_towers
from searchengine.models.onnx_runtime import META, OnnxTower, read_meta

ROOT = Path(__file__).parents[3]
TEXTS = ["a small boat on a river", "Neon signs in the rain", "x", "kids building a sandcastle at low tide, with "
         "buckets and spades scattered around them and a lighthouse far behind"]
FORBIDDEN = ("torch", "open_clip", "transformers", "timm", "torchvision")


def _images(size: int, n: int, seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape
    return np.sum(a.astype(np.float64) * b.astype(np.float64), axis=1)


@pytest.fixture(scope="module")
def tiny(tiny_model) -> ClipEncoder:
    return load_encoder(tiny_model, "cpu", "fp32")


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory) -> tuple[Path, onnx_export.ExportReport]:
    folder = tmp_path_factory.mktemp("onnx") / "export"
    return folder, export_towers(tiny, folder)


def test_tiny_towers_match_torch_on_new_inputs(tiny, tiny_export):
    folder, report = tiny_export
    assert set(report.towers) == {"text", "image"} and report.kept == ()
    assert all(t.min_cosine >= 0.9999 and t.probes >= 7 for t in report.towers.values())
    text = OnnxTower.load(folder, "text", fingerprint=report.fingerprint, dim=tiny.dim)
    image = OnnxTower.load(folder, "image", fingerprint=report.fingerprint, dim=tiny.dim)
    for batch in (TEXTS, TEXTS[:1]):
        got = text.encode_tokens(tiny.tokenizer(batch).numpy())
        assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        assert _cos(got, tiny.encode_texts(batch)).min() >= 0.9999
    for batch in (_images(tiny.image_size, 5), _images(tiny.image_size, 1, seed=9)):
        assert _cos(image.encode_images(batch), tiny.encode_pixels(batch)).min() >= 0.9999
    one_shot = OnnxTower.load(folder, "text", prepack=False, threads=1)  # a session for one query
    assert _cos(one_shot.encode_tokens(tiny.tokenizer(TEXTS).numpy()), tiny.encode_texts(TEXTS)).min() >= 0.9999
    assert text.encode_tokens(np.zeros((0, 16), np.int64)).shape == (0, tiny.dim)
    with pytest.raises(ValueError, match="16 ids"):
        text.encode_tokens(np.zeros((1, 8), np.int64))
    with pytest.raises(ValueError, match="not the image tower"):
        text.encode_pixels(np.zeros((1, 3, 32, 32), np.float32))


def test_meta_records_the_export(tiny, tiny_export):
    import onnxruntime

    folder, report = tiny_export
    meta = read_meta(folder, fingerprint=fingerprint_id(tiny.probe()), dim=32, towers=("text", "image"))
    assert (meta["spec"], meta["dim"], meta["context_length"], meta["image_size"]) == (tiny.spec, 32, 16, 32)
    assert meta["fingerprint"] == report.fingerprint and meta["opset"] == 17
    assert meta["onnxruntime"] == onnxruntime.__version__ and meta["created"].endswith("+00:00")
    assert meta["towers"]["text"]["inputs"] == ["input_ids"] and meta["towers"]["image"]["inputs"] == ["pixels"]
    assert meta["text"] == {"kind": "open_clip", "fixed_length": True, "pad_id": 0}
    assert meta["normalize"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    for tower in ("text", "image"):
        assert meta["towers"][tower]["min_cosine"] == pytest.approx(report.towers[tower].min_cosine)
        files = meta["towers"][tower]["files"]
        assert set(files) == {f"{tower}.onnx", f"{tower}.onnx.data"}  # weights as external data
        assert all((folder / name).stat().st_size == f["bytes"] for name, f in files.items())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [META, "text.onnx", "text.onnx.data", "image.onnx", "image.onnx.data"])
    assert [p.name for p in folder.parent.iterdir()] == ["export"]  # no temp folder left


@pytest.mark.parametrize("damage, match", [
    ("no meta", "no complete ONNX export"),
    ("no data", "incomplete: text.onnx.data is missing"),
    ("truncated", "damaged: text.onnx.data holds"),
    ("flipped", "damaged: text.onnx.data is not the file written"),
    ("format", "format 99"),
    ("runtime", "optimised by onnxruntime 0.1.0"),
    ("fingerprint", "stale"),
    ("dim", "gives 32-d vectors, expected 64"),
    ("no tower", "no image tower"),
])
def test_damaged_incomplete_or_stale_exports_are_refused(tiny_export, tmp_path, damage, match):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_export[0], folder)
    meta = json.loads((folder / META).read_text())
    expect = {"fingerprint": meta["fingerprint"], "dim": 32}
    data = folder / "text.onnx.data"
    if damage == "no meta":
        (folder / META).unlink()
    elif damage == "no data":
        data.unlink()
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:-4])
    elif damage == "flipped":
        raw = bytearray(data.read_bytes())
        raw[100] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage in ("format", "runtime", "no tower"):
        meta.update({"format": {"format": 99}, "runtime": {"onnxruntime": "0.1.0"}}.get(damage, {}))
        if damage == "no tower":
            del meta["towers"]["image"]
        (folder / META).write_text(json.dumps(meta))
    elif damage == "fingerprint":
        expect["fingerprint"] = "0123456789ab"
    else:
        expect["dim"] = 64
    tower = "image" if damage == "no tower" else "text"
    with pytest.raises(ModelLoadError, match=match):
        OnnxTower.load(folder, tower, deep=damage == "flipped", **expect)


def test_a_failed_verification_installs_nothing(tiny, tiny_export, tmp_path, monkeypatch):
    """A graph that drifts from torch (here: a shifted text tower) is refused and deleted; an earlier
    export in the target folder stays as it was."""
    folder = tmp_path / "export"
    shutil.copytree(tiny_export[0], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(onnx_export, "_text_forward", lambda model, ids: model.encode_text(ids) + 0.3)
    with pytest.raises(ModelLoadError, match="differs from torch"):
        export_towers(tiny, folder, towers=("text",))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    with pytest.raises(ModelLoadError, match="differs from torch"):
        export_towers(tiny, tmp_path / "fresh", towers=("text",))
    assert not (tmp_path / "fresh").exists()


def test_reexporting_one_tower_keeps_the_other(tiny, tiny_export, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export[0], folder)
    report = export_towers(tiny, folder, towers=("image",))
    assert set(report.towers) == {"image"} and report.kept == ("text",)
    assert set(read_meta(folder, towers=("text", "image"))["towers"]) == {"text", "image"}
    OnnxTower.load(folder, "text", fingerprint=report.fingerprint, deep=True)


def test_only_fp32_models_export(tiny_model, tmp_path):
    with pytest.raises(ModelLoadError, match="fp32"):
        export_towers(load_encoder(tiny_model, "cpu", "bf16"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_query_side_runs_without_torch(tiny, tiny_export):
    folder, report = tiny_export
    ids = tiny.tokenizer(TEXTS).numpy().tolist()
    images = _images(tiny.image_size, 2)
    code = f"""if True:
        import json, sys
        import numpy as np
        from searchengine.models.onnx_runtime import OnnxTower
        text = OnnxTower.load({str(folder)!r}, "text", fingerprint={report.fingerprint!r}, dim=32)
        image = OnnxTower.load({str(folder)!r}, "image", fingerprint={report.fingerprint!r}, dim=32)
        t = text.encode_tokens(np.array({ids!r}))
        rng = np.random.default_rng(5)
        i = image.encode_images([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)])
        print(json.dumps({{"mods": sorted(m for m in {FORBIDDEN!r} if m in sys.modules),
                          "text": t.tolist(), "image": i.tolist()}}))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=120)
    got = json.loads(out.stdout)
    assert got["mods"] == []
    assert _cos(np.array(got["text"], np.float32), tiny.encode_texts(TEXTS)).min() >= 0.9999
    assert _cos(np.array(got["image"], np.float32), tiny.encode_pixels(images)).min() >= 0.9999


@pytest.fixture(scope="module")
def lite() -> ClipEncoder:
    """The shipped lite model, built directly: load_encoder would also trace its image trunk (~10 s)."""
    from searchengine.models.lite import build_lite
    from searchengine.models.registry import resolve_encoder

    model, preprocess, tokenizer = build_lite(resolve_encoder("lite").folder)
    return ClipEncoder("lite", model, preprocess, tokenizer, "cpu")


@pytest.mark.slow
def test_lite_towers_match_torch(lite, tmp_path):
    report = export_towers(lite, tmp_path / "lite")
    assert all(t.min_cosine >= 0.9999 for t in report.towers.values())
    meta = read_meta(tmp_path / "lite", fingerprint=report.fingerprint, dim=lite.dim)
    assert meta["towers"]["text"]["inputs"] == ["input_ids", "attention_mask"]
    assert meta["text"] == {"kind": "lite", "fixed_length": False, "pad_id": 0}
    assert meta["context_length"] == 64 and meta["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    text = OnnxTower.load(tmp_path / "lite", "text", fingerprint=report.fingerprint, dim=lite.dim)
    for batch in (TEXTS, TEXTS[2:3]):  # padded to the longest, and one short text alone
        ids = lite.tokenizer(batch).numpy()  # ids only: the mask is derived from the pad id
        assert _cos(text.encode_tokens(ids), lite.encode_texts(batch)).min() >= 0.9999
    image = OnnxTower.load(tmp_path / "lite", "image", fingerprint=report.fingerprint, dim=lite.dim)
    batch = _images(lite.image_size, 3)
    assert _cos(image.encode_images(batch), lite.encode_pixels(batch)).min() >= 0.9999
