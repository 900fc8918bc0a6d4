"""On demand: the cross-fitted ITM reranker experiment (docs/retrieval-quality.md, "The in-house ITM reranker").

Lite heads are retrained on 5 folds of Tux Paint train so every pair has an out-of-fold dual score;
the reranker trains on 4 folds (negatives mined within a fold), validates on the fifth, and is
measured on the Tux Paint test split. Needs `python data/fetch.py tuxpaint` and the ITM feature
cache (built on first run). Run from the repository root:

    python tests/benchmarks/itm_crossfit.py '{"epochs": 15, "rerank_top": 10, "out": "/tmp/itm/xf"}'
"""
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from searchengine.models.itm import CrossAttentionITM, ItmConfig, LiteItmReranker, save_itm
from searchengine.training.contrastive import TrainOptions, train
from searchengine.training.datasets import load_pairs
from searchengine.training.features import FeatureCache
from searchengine.training.itm import ItmOptions, ItmReport, _fit, _rerank_recall, _split_data

K = 5
kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
out = Path(kw.pop("out", "/tmp/itm/xf"))
opts = ItmOptions(**kw)
tux = load_pairs("data/cache/tuxpaint/train.jsonl")
tux = [p for p in tux if p.captions]
rng = random.Random(0)
idx = list(range(len(tux))); rng.shuffle(idx)
fold = np.zeros(len(tux), np.int64)
for r, i in enumerate(idx):
    fold[i] = r % K
cache = FeatureCache.files(Path("data/cache/itm-features/itm-lite2-longest-32"))
base_model = LiteItmReranker("lite", CrossAttentionITM(ItmConfig(base="lite")), "cpu")
data, skipped = _split_data(base_model, tux, 1, cache, None)
assert skipped == 0 and len(data.patches) == len(tux)
img_v = torch.zeros_like(data.image_vecs); txt_v = torch.zeros_like(data.text_vecs)
for k in range(K):
    d = Path(f"{out}-fold{k}")
    if not (d / "heads.safetensors").exists():
        tr = [p for p, f in zip(tux, fold) if f != k]
        train(tr, base="lite", out=d, from_scratch=True, cache_dir=Path("data/cache/train-features"),
              options=TrainOptions(variant="lite2", heads=8, embed_dim=128, max_captions=1, val_fraction=0.2, refit=True))
    m = LiteItmReranker(f"local-dir:{d}", CrossAttentionITM(ItmConfig(base=f"local-dir:{d}")), "cpu")
    with torch.inference_mode():
        iv = m.image_vectors(data.patches); tv = m.text_vectors(data.states, data.mask)
    sel = torch.from_numpy(fold == k)
    img_v[sel] = iv[sel]; tsel = torch.from_numpy(fold[data.owner] == k); txt_v[tsel] = tv[tsel]
    # OOF recall within fold
    ii = np.flatnonzero(fold == k); tt = np.flatnonzero(fold[data.owner] == k)
    s = (tv[tt] @ iv[ii].T).numpy(); r1 = np.mean([ii[np.argmax(s[q])] == data.owner[t] for q, t in enumerate(tt)])
    print(f"fold {k}: OOF dual R@1 within fold {r1:.3f} ({len(ii)} images)", flush=True)

def subset(d, imgs):
    from searchengine.training.itm import _Split
    imgs = np.asarray(imgs); remap = {int(j): n for n, j in enumerate(imgs)}
    texts = np.flatnonzero(np.isin(d.owner, imgs))
    return _Split(d.patches[imgs], d.states[texts], d.mask[texts], np.array([remap[int(o)] for o in d.owner[texts]]),
                  [{remap[j] for j in d.positives[t] if j in remap} for t in texts], img_v_all[imgs], txt_v_all[texts])

M = 1000.0
onehot = torch.nn.functional.one_hot(torch.from_numpy(fold), K).float()
img_v_all = torch.cat([img_v, onehot], 1)
txt_v_all = torch.cat([txt_v, -M * (1 - onehot[torch.from_numpy(data.owner)])], 1)
val_fold = 0
train_s = subset(data, np.flatnonzero(fold != val_fold))
val_s = subset(data, np.flatnonzero(fold == val_fold))
torch.manual_seed(opts.seed)
side = data.patches.shape[1]
head = CrossAttentionITM(ItmConfig(base="lite", dim=opts.dim, layers=opts.layers, heads=opts.heads, dropout=opts.dropout, patches=side))
# the head's dual input: strip the fold columns so dual = true cosine (fold block adds 0 within fold)
rep = ItmReport(base="lite", out=str(out), train_pairs=len(train_s.patches), val_pairs=len(val_s.patches), rerank_top=opts.rerank_top)
rep.dual_recall_at_1, rep.recall_at_1 = _rerank_recall(head, base_model, val_s, opts.rerank_top)
print("val dual", rep.dual_recall_at_1, flush=True)
best = {k: v.detach().clone() for k, v in head.state_dict().items()}
t0 = time.time()
_fit(head, base_model, train_s, val_s, opts, rep, lambda e: print(e, flush=True), best)
print("best epoch", rep.best_epoch, rep.recall_at_1, time.time() - t0, flush=True)
save_itm(head, out)
base_model.head = head.eval()
test = load_pairs("data/cache/tuxpaint/test.jsonl")
td, _ = _split_data(base_model, test, 1, cache, None)
for top in (5, 10, 20):
    print("TEST top", top, _rerank_recall(head, base_model, td, top), flush=True)
