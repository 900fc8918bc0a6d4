"""searchengine.models.tokenize: id-for-id equality with open_clip and with lite's transformers tokenizer."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from searchengine.errors import ModelLoadError
from searchengine.models.tokenize import (
    SETTINGS,
    ClipBpeTokenizer,
    WordPieceTokenizer,
    clip_clean,
    load_tokenizer,
    open_clip_vocab_path,
)

ROOT = Path(__file__).parents[3]
WORDS = ("a photo of the dog cat red car sunset over beach mountain people walking in park my "
         "grandmother's kitchen children playing football night city lights bird on branch snow "
         "covered trees old black and white portrait bicycle leaning against wall").split()
ACCENTED = ["café", "naïve", "Ångström", "São Paulo", "Zürich", "crème brûlée", "Dvořák", "façade",
            "e\u0301le\u0300ve", "ΟΔΟΣ", "İstanbul", "straße", "ǅemal", "Ｆｕｌｌｗｉｄｔｈ", "ﬁsh ﬂower"]
CJK = ["日本語のテキスト", "猫が好き", "北京天安门", "한국어 문장", "東京タワー 夜景", "中文，标点。", "ｶﾀｶﾅ"]
EMOJI = ["🐶", "🎉🎉", "👨‍👩‍👧", "🇫🇷", "👍🏽", "❤️", "☕", "🏔️ hike", "😀😃😄", "✨new✨"]
ENTITIES = ["&amp;", "&lt;b&gt;", "&quot;hi&quot;", "&#39;", "&#x27;", "&nbsp;", "&amp;amp;", "&amp;lt;",
            "&AMP;", "&copy", "fish &amp chips", "<b>bold</b> &amp;", "&#128512;", "&notanentity;"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u3000", "\xa0", "\u2028", " \t\n ", "\x0b", "\x1c", "\x85"]
APOSTROPHES = ["it's", "don't", "they're", "we've", "I'm", "you'll", "she'd", "IT'S", "DON'T", "rock'n'roll",
               "it’s", "‘quoted’", "“double”", "o'clock", "'s", "''", "`tick`"]
URLS = ["https://example.com/a?b=c&d=1", "http://www.Foo-Bar.org/x_y/z.html#frag", "user@mail.example.com",
        "C:\\Users\\me\\pic_01.jpg", "ftp://1.2.3.4:21/file", "www.site.co.uk/path/"]
ODD = ["cafÃ©", "Ã¼ber", "\x1b[31mred\x1b[0m", "a\x00b", "tab\x7fdel", "x\u200by",
       "<start_of_text>", "a<end_of_text>b", "!<start_of_text>", "it's<end_of_text>", "<START_OF_TEXT>",
       "<<start_of_text>>", "x <end_of_text> <start_of_text>", "1<start_of_text>2"]
NUMBERS = ["2024", "3.14159", "1,000,000", "2nd", "42nd street", "-7", "1e10", "٣", "Ⅻ", "½", "x²"]
PUNCT = list("!?.,;:-_()[]{}<>/\\|@#$%^*+=~\"'") + ["...", "?!", "--", "—", "…", "«»", "¿¡"]
BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
          (0x900, 0x97F), (0xE00, 0xE7F), (0x2000, 0x206F), (0x2190, 0x22FF), (0x3040, 0x30FF),
          (0x4E00, 0x4EFF), (0xAC00, 0xAC7F), (0x1F300, 0x1F64F), (0x1D400, 0x1D4FF)]


def _caption(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _mixed_case(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.4 else c for c in text)


def _random_unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        lo, hi = rng.choice(BLOCKS)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _sprinkle(rng: random.Random, pools: list[list[str]], k: int) -> str:
    parts = []
    for _ in range(k):
        pool = rng.choice(pools)
        parts.append(rng.choice(pool) if pool is not WORDS else rng.choice(WORDS))
        parts.append(rng.choice(["", " ", " ", " ", rng.choice(SPACES), rng.choice(PUNCT)]))
    return "".join(parts)


def make_corpus(seed: int = 17) -> list[str]:
    """About 2,400 deterministic strings covering what a query or a caption may hold."""
    rng = random.Random(seed)
    fixed = ["", " ", "   ", "\t\n", "\n\n\n", "\u3000", "a", "A", "!", "a flower", "A Photo of a DOG!!"]
    fixed += ACCENTED + CJK + EMOJI + ENTITIES + APOSTROPHES + URLS + ODD + NUMBERS + PUNCT
    corpus = list(fixed)
    pools = [WORDS, ACCENTED, CJK, EMOJI, ENTITIES, APOSTROPHES, URLS, ODD, NUMBERS, PUNCT, SPACES]
    for _ in range(300):
        corpus.append(_caption(rng, rng.randint(1, 15)))  # ordinary captions
        corpus.append(_mixed_case(rng, _caption(rng, rng.randint(1, 10))))
        corpus.append(_sprinkle(rng, pools, rng.randint(1, 12)))  # everything mixed
        corpus.append(_mixed_case(rng, _sprinkle(rng, pools, rng.randint(1, 6))))
        corpus.append(_random_unicode(rng, rng.randint(1, 30)))
        corpus.append(rng.choice(SPACES) * rng.randint(1, 3) + _caption(rng, 3) + rng.choice(SPACES) * 2)
        corpus.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 9))) for _ in range(rng.randint(1, 5))))
        corpus.append(_caption(rng, 2) + " " + rng.choice(APOSTROPHES) + " " + rng.choice(ENTITIES))
    for _ in range(40):  # far past 77 tokens: truncation
        corpus.append(_sprinkle(rng, pools, rng.randint(60, 200)))
        corpus.append(_caption(rng, rng.randint(70, 300)))
    corpus.append("word " * 5000)
    return corpus


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def clip_tok() -> ClipBpeTokenizer:
    return ClipBpeTokenizer.from_vocab(open_clip_vocab_path())


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    from searchengine.models.backbones import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="module")
def lite_reference(minilm_folder):
    """What lite tokenizes with today: ``LiteTokenizer`` around transformers' tokenizer, context 64."""
    from transformers import AutoTokenizer

    from searchengine.models.lite import LiteConfig, LiteTokenizer

    hf = AutoTokenizer.from_pretrained(str(minilm_folder), local_files_only=True)
    return LiteTokenizer(hf, LiteConfig().context_length)


def test_corpus_covers_the_hard_cases(corpus):
    assert len(corpus) >= 2000 and len(set(corpus)) > 1900
    import open_clip

    tokens = open_clip.tokenize(corpus).numpy()
    assert (tokens[:, -1] != 0).sum() >= 50  # truncated rows
    assert sum(1 for t in corpus if not t.strip()) >= 5
    assert sum(1 for t in corpus if not t.isascii()) >= 500  # the ftfy path
    assert sum(1 for t in corpus if "&" in t) >= 100
    assert sum(1 for t in corpus if "<start_of_text>" in t.lower() or "<end_of_text>" in t) >= 5


def test_clean_matches_open_clip(corpus):
    from open_clip.tokenizer import _clean_lower

    assert [clip_clean(t) for t in corpus] == [_clean_lower(t) for t in corpus]


def test_vocab_path_is_open_clips():
    from open_clip.tokenizer import default_bpe

    assert open_clip_vocab_path() == Path(default_bpe())


@pytest.mark.parametrize("context_length", [77, 16])
def test_clip_equals_open_clip(clip_tok, corpus, context_length):
    import open_clip

    tok = ClipBpeTokenizer(clip_tok.merges, context_length)
    ours = tok(corpus)
    ref = open_clip.tokenize(corpus, context_length=context_length).numpy()
    assert ours.dtype == np.int64 and ours.shape == ref.shape == (len(corpus), context_length)
    bad = [corpus[i] for i in np.flatnonzero((ours != ref).any(axis=1))]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[:5]!r}"
    for text in corpus[:50]:  # one at a time, and a bare string
        assert (tok(text) == open_clip.tokenize([text], context_length=context_length).numpy()).all()


def test_clip_special_tokens_and_edges(clip_tok):
    ids = clip_tok(["", "a<end_of_text>b", "!<start_of_text>"])
    sot, eot = clip_tok.sot_id, clip_tok.eot_id
    assert (sot, eot) == (49406, 49407)
    assert list(ids[0, :3]) == [sot, eot, 0]
    a, b = 256 + ord("a") - ord("!"), 256 + ord("b") - ord("!")  # open_clip's ids of "a</w>", "b</w>"
    assert list(ids[1, :6]) == [sot, a, eot, b, eot, 0]  # the literal special is one token
    assert (ids[2] == sot).sum() == 1  # after '!' it is punctuation, as in open_clip's pattern
    assert clip_tok([]).shape == (0, 77)


def test_clip_save_load_round_trip(clip_tok, corpus, tmp_path):
    folder = ClipBpeTokenizer(clip_tok.merges, 32).save(tmp_path / "clip")
    assert sorted(p.name for p in folder.iterdir()) == sorted([ClipBpeTokenizer.MERGES, SETTINGS])
    back = ClipBpeTokenizer.load(folder)
    assert back.context_length == 32
    assert (back(corpus) == ClipBpeTokenizer(clip_tok.merges, 32)(corpus)).all()
    assert isinstance(load_tokenizer(folder), ClipBpeTokenizer)
    with pytest.raises(ModelLoadError):
        WordPieceTokenizer.load(folder)  # the kind is checked


def test_bad_inputs_raise(tmp_path, clip_tok, minilm_folder):
    with pytest.raises(ModelLoadError):
        ClipBpeTokenizer.load(tmp_path)
    with pytest.raises(ModelLoadError):
        load_tokenizer(tmp_path)
    (tmp_path / "v.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(ModelLoadError):
        ClipBpeTokenizer.from_vocab(tmp_path / "v.txt.gz")
    lines = ["#version: 0.2", *clip_tok.merges]
    lines[5] = lines[4]  # two merges making one token: open_clip's ids would skip one
    (tmp_path / "dup.txt.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(ModelLoadError, match="same token"):
        ClipBpeTokenizer.from_vocab(tmp_path / "dup.txt.gz")
    folder = clip_tok.save(tmp_path / "clip")
    (folder / ClipBpeTokenizer.MERGES).write_text("\n".join(clip_tok.merges[:-1]), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="merges"):
        ClipBpeTokenizer.load(folder)
    folder = WordPieceTokenizer.from_hf_folder(minilm_folder).save(tmp_path / "wp")
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        WordPieceTokenizer.load(folder)
    (folder / SETTINGS).write_text(json.dumps({"format": 1, "kind": "other"}))
    with pytest.raises(ModelLoadError, match="unknown tokenizer kind"):
        load_tokenizer(folder)


def _lite_batches(corpus: list[str]) -> list[list[str]]:
    rng = random.Random(5)
    batches, i = [], 0
    while i < len(corpus):
        n = rng.choice([1, 1, 2, 7, 32, 100])
        batches.append(corpus[i:i + n])
        i += n
    return batches + [corpus]


def test_wordpiece_equals_lite(minilm_folder, lite_reference, corpus):
    tok = WordPieceTokenizer.from_hf_folder(minilm_folder, context_length=lite_reference.context_length)
    assert tok.pad_id == 0
    for batch in _lite_batches(corpus):
        ref = lite_reference(batch).numpy()
        out = tok(batch)
        assert set(out) == {"input_ids", "attention_mask"}
        assert out["input_ids"].dtype == np.int64 and out["input_ids"].shape == ref.shape
        bad = [batch[i] for i in np.flatnonzero((out["input_ids"] != ref).any(axis=1))]
        assert not bad, f"{len(bad)} texts differ, e.g. {bad[:5]!r}"
        assert (out["attention_mask"] == (ref != 0)).all()
    assert tok(corpus)["input_ids"].shape[1] == 64  # truncated at the context length


def test_wordpiece_matches_transformers_mask_and_length(minilm_folder, lite_reference):
    texts = ["a flower", "", "a much longer caption about a red car parked " * 20]
    tok = WordPieceTokenizer.from_hf_folder(minilm_folder, context_length=16)
    hf = lite_reference.hf(texts, padding=True, truncation=True, max_length=16, return_tensors="np")
    out = tok(texts)
    assert (out["input_ids"] == hf["input_ids"]).all() and (out["attention_mask"] == hf["attention_mask"]).all()
    assert out["input_ids"].shape == (3, 16) and tok([])["input_ids"].shape == (0, 0)


def test_wordpiece_save_load_round_trip(minilm_folder, corpus, tmp_path):
    tok = WordPieceTokenizer.from_hf_folder(minilm_folder, context_length=64)
    back = WordPieceTokenizer.load(tok.save(tmp_path / "wp"))
    assert (back.context_length, back.pad_id) == (64, 0)
    for batch in _lite_batches(corpus)[:40]:
        a, b = tok(batch), back(batch)
        assert all((a[k] == b[k]).all() for k in a)
    assert isinstance(load_tokenizer(tmp_path / "wp"), WordPieceTokenizer)


def test_query_path_loads_no_torch(clip_tok, minilm_folder, tmp_path):
    """A fresh process tokenizes with saved tokenizers without importing torch, open_clip or transformers."""
    import open_clip

    clip_tok.save(tmp_path / "clip")
    WordPieceTokenizer.from_hf_folder(minilm_folder).save(tmp_path / "wp")
    texts = ["a flower", "Café 🐶 &amp; 日本", "it's <end_of_text>!"]
    code = (
        "import json, sys\n"
        "from searchengine.models.tokenize import load_tokenizer, open_clip_vocab_path\n"
        "vocab = str(open_clip_vocab_path())\n"
        f"texts = {texts!r}\n"
        f"clip_tok, wp_tok = load_tokenizer({str(tmp_path / 'clip')!r}), load_tokenizer({str(tmp_path / 'wp')!r})\n"
        "plain = clip_tok(['a flower', 'The DOG\\'s bed, 2 cats!']).tolist()\n"
        "ftfy_for_plain = 'ftfy' in sys.modules\n"
        "clip, wp = clip_tok(texts), wp_tok(texts)\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'transformers', 'timm') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'ftfy': ftfy_for_plain, 'plain': plain, 'clip': clip.tolist(),\n"
        "                  'wp': wp['input_ids'].tolist(), 'vocab': vocab}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    got = json.loads(out.stdout)
    assert got["heavy"] == [] and got["ftfy"] is False  # ftfy only for text it could change
    assert got["vocab"] == str(open_clip_vocab_path())  # found without importing open_clip
    assert got["plain"] == open_clip.tokenize(["a flower", "The DOG's bed, 2 cats!"]).numpy().tolist()
    assert got["clip"] == open_clip.tokenize(texts).numpy().tolist()
    assert got["wp"] == WordPieceTokenizer.from_hf_folder(minilm_folder)(texts)["input_ids"].tolist()
