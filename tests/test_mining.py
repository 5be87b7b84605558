"""Bitext mining: equal to a brute-force numpy transcription of LASER's mine_bitexts.py on
constructed cases with hubs and duplicates; streamed in blocks and split over devices; and on
real data, the main job's trained tiny model mining the committed LibreOffice sample."""

import itertools
import pathlib

import jax
import numpy as np
import pytest

from sonar_jax.evaluate import mining
from sonar_jax.evaluate.neighbors import knn, knn_blocks

ROOT = pathlib.Path(__file__).parent.parent
SAMPLE = ROOT / "data" / "sample" / "libreoffice"
TINY_ENCODER = pathlib.Path(__file__).parent / "fixtures" / "trained" / "main_job_tiny" / "encoder"


def laser_mine(x, y, *, k, margin, retrieval, threshold=None, x_texts=None, y_texts=None):
    """LASER's mine mode written out plainly: unify, k-NN both ways by brute force, score every
    candidate, pick per retrieval; returns [(score, source row, target row)] best first."""
    def unify(texts, n):
        if texts is None:
            return list(range(n))
        first = {}
        for row, text in enumerate(texts):
            first.setdefault(text, row)
        return sorted(first.values())

    xr, yr = unify(x_texts, len(x)), unify(y_texts, len(y))
    xu = np.asarray(x, np.float32)[xr]
    yu = np.asarray(y, np.float32)[yr]
    xu = xu / np.linalg.norm(xu, axis=1, keepdims=True)
    yu = yu / np.linalg.norm(yu, axis=1, keepdims=True)
    sims = xu.astype(np.float64) @ yu.astype(np.float64).T

    def neighbours(s, kk):
        ind = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        return np.take_along_axis(s, ind, axis=1), ind

    x2y_sim, x2y_ind = neighbours(sims, min(k, len(yr)))
    y2x_sim, y2x_ind = neighbours(sims.T, min(k, len(xr)))
    fwd_mean, bwd_mean = x2y_sim.mean(axis=1), y2x_sim.mean(axis=1)
    f = {"absolute": lambda a, b: a, "distance": lambda a, b: a - b,
         "ratio": lambda a, b: a / b}[margin]

    def score_candidates(s, ind, mean_q, mean_c):
        out = np.zeros(ind.shape)
        for i, j in itertools.product(range(ind.shape[0]), range(ind.shape[1])):
            out[i, j] = f(s[i, ind[i, j]], (mean_q[i] + mean_c[ind[i, j]]) / 2)
        return out

    fwd_scores = score_candidates(sims, x2y_ind, fwd_mean, bwd_mean)
    bwd_scores = score_candidates(sims.T, y2x_ind, bwd_mean, fwd_mean)
    fwd_best = x2y_ind[np.arange(len(xr)), fwd_scores.argmax(axis=1)]
    bwd_best = y2x_ind[np.arange(len(yr)), bwd_scores.argmax(axis=1)]
    pairs = []
    if retrieval == "forward":
        pairs = [(fwd_scores[i].max(), i, j) for i, j in enumerate(fwd_best)]
    elif retrieval == "backward":
        pairs = [(bwd_scores[j].max(), i, j) for j, i in enumerate(bwd_best)]
    elif retrieval == "intersection":
        pairs = [(fwd_scores[i].max(), i, j) for i, j in enumerate(fwd_best) if bwd_best[j] == i]
    else:
        indices = np.stack((np.concatenate((np.arange(len(xr)), bwd_best)),
                            np.concatenate((fwd_best, np.arange(len(yr))))), axis=1)
        scores = np.concatenate((fwd_scores.max(axis=1), bwd_scores.max(axis=1)))
        seen_src, seen_trg = set(), set()
        for i in np.argsort(-scores, kind="stable"):
            src, trg = indices[i]
            if src not in seen_src and trg not in seen_trg:
                seen_src.add(src)
                seen_trg.add(trg)
                pairs.append((scores[i], src, trg))
    if threshold is not None:
        pairs = [p for p in pairs if p[0] > threshold]
    pairs = [(s, xr[i], yr[j]) for s, i, j in pairs]
    return sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))


def _case(seed=0, n=40, m=50, dim=16):
    """Targets: noisy translations of 30 sources, 2 hubs near many sources, random rest;
    duplicated sentences (same text, same vector) on both sides."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.normal(size=(m, dim)).astype(np.float32)
    gold = rng.permutation(m)[:30]
    y[gold] = x[:30] + 0.3 * rng.normal(size=(30, dim)).astype(np.float32)
    rest = rng.permutation(sorted(set(range(m)) - set(gold)))
    hubs, twin = rest[:2], rest[2]
    y[hubs] = x[:20].mean(axis=0) + 0.05 * rng.normal(size=(2, dim)).astype(np.float32)
    x_texts, y_texts = [f"x{i}" for i in range(n)], [f"y{j}" for j in range(m)]
    for a, b in ((5, 33), (7, 39)):  # source duplicates
        x[b], x_texts[b] = x[a], x_texts[a]
    y[twin], y_texts[twin] = y[gold[0]], y_texts[gold[0]]  # a target duplicate
    return x, y, x_texts, y_texts


def _as_tuples(pairs):
    return list(zip(pairs.scores.tolist(), pairs.sources.tolist(), pairs.targets.tolist()))


def _assert_same(got, want):
    assert [(s, t) for _, s, t in got] == [(s, t) for _, s, t in want]
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("margin", ["ratio", "distance", "absolute"])
@pytest.mark.parametrize("retrieval", mining.RETRIEVALS)
@pytest.mark.parametrize("unify", [True, False])
def test_mining_matches_laser_brute_force(margin, retrieval, unify):
    x, y, x_texts, y_texts = _case()
    texts = dict(x_texts=x_texts, y_texts=y_texts) if unify else {}
    threshold = {"ratio": 1.0, "distance": 0.0, "absolute": 0.3}[margin]
    for cut in (None, threshold):
        want = laser_mine(x, y, k=4, margin=margin, retrieval=retrieval, threshold=cut, **texts)
        got = mining.mine(x, y, k=4, margin=margin, retrieval=retrieval, threshold=cut, **texts)
        _assert_same(_as_tuples(got), want)
    assert len(want) > 0


def test_unify_mines_no_pair_twice():
    x, y, x_texts, y_texts = _case()
    pairs = mining.mine(x, y, retrieval="forward", x_texts=x_texts, y_texts=y_texts)
    texts = [(x_texts[s], y_texts[t]) for s, t in zip(pairs.sources, pairs.targets)]
    assert len(texts) == len(set(texts)) == len(set(x_texts))
    assert len(mining.mine(x, y, retrieval="forward")) == len(x)  # no texts: every row


def test_margin_discounts_a_hub():
    """Sources share a component c; a target hub near c is the nearest target of most
    sources, though each has a (noisy) translation. The ratio margin sees through the hub."""
    rng = np.random.default_rng(3)
    c = rng.normal(size=16)
    noise = rng.normal(size=(30, 16))
    x = c + noise
    y = np.concatenate([c + noise + 1.5 * rng.normal(size=(30, 16)),
                        c + 0.05 * rng.normal(size=(2, 16))])
    hub_share = {m: np.mean(mining.mine(x, y, retrieval="forward", margin=m).targets >= 30)
                 for m in ("absolute", "ratio")}
    assert hub_share["absolute"] > 0.5 and hub_share["ratio"] < hub_share["absolute"] / 2, hub_share


def test_streamed_blocks_and_devices_change_nothing():
    x, y, x_texts, y_texts = _case(seed=1, n=70, m=90)
    whole = mining.mine(x, y, x_texts=x_texts, y_texts=y_texts)
    split = mining.mine(x, y, x_texts=x_texts, y_texts=y_texts, block_rows=7,
                        devices=jax.local_devices(), query_chunk=8, candidate_chunk=5)
    _assert_same(_as_tuples(split), _as_tuples(whole))
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    blocks = knn_blocks(q, (q[i:i + 3] for i in range(0, len(q), 3)), 6)
    one = knn(q, q, 6)
    np.testing.assert_array_equal(blocks.indices, one.indices)
    np.testing.assert_allclose(blocks.scores, one.scores, rtol=1e-6)


def test_mining_input_errors():
    x, y, *_ = _case()
    with pytest.raises(ValueError, match="width 16 but the target embeddings 8"):
        mining.mine(x, y[:, :8])
    with pytest.raises(ValueError, match="unknown retrieval 'fwd'"):
        mining.mine(x, y, retrieval="fwd")
    with pytest.raises(ValueError, match="unknown margin"):
        mining.mine(x, y, margin="cosine")
    with pytest.raises(ValueError, match="3 texts for 40 embeddings"):
        mining.mine(x, y, x_texts=["a", "b", "c"])
    assert len(mining.mine(x[:0], y)) == 0


def _shuffled_halves(n, seed=0):
    """Rows of an aligned set on each side: the sources keep 3/4 of the rows, the targets
    another 3/4, each in its own random order, so half the rows have a translation present."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    src, tgt = order[: 3 * n // 4].copy(), order[n // 4:].copy()
    rng.shuffle(src)
    rng.shuffle(tgt)
    return src, tgt


THRESHOLDS = (None, 1.0, 1.02)


def libreoffice_mining_scores(pipeline, thresholds=THRESHOLDS) -> dict:
    """{threshold: (precision, recall)} of mining English against each other language of the
    sample's held-out splits (dev + devtest, 400 aligned rows) from shuffled halves, pooled
    over the 13 pairs; a mined pair is right when the two texts are an aligned row."""
    def read(lang):
        return [line for split in ("dev", "devtest")
                for line in (SAMPLE / split / f"{lang}.{split}").read_text("utf-8").splitlines()]

    english = read("eng_Latn")
    src_rows, tgt_rows = _shuffled_halves(len(english))
    eng = [english[i] for i in src_rows]
    x = pipeline.predict(eng, "eng_Latn", batch_size=64)
    langs = sorted(p.name.split(".")[0] for p in (SAMPLE / "dev").iterdir())
    right, scores, present = [], [], 0
    for lang in (code for code in langs if code != "eng_Latn"):
        other = read(lang)
        tgt = [other[i] for i in tgt_rows]
        gold = {(english[i], other[i]) for i in set(src_rows) & set(tgt_rows)}
        found = mining.mine(x, pipeline.predict(tgt, lang, batch_size=64), x_texts=eng,
                            y_texts=tgt)
        right += [(eng[s], tgt[t]) in gold for s, t in zip(found.sources, found.targets)]
        scores += found.scores.tolist()
        present += len(gold)
    right, scores = np.array(right), np.array(scores)
    out = {}
    for threshold in thresholds:
        kept = right[scores > threshold] if threshold is not None else right
        out[threshold] = (kept.mean(), kept.sum() / present)
    return out


# Measured with this test (pytest -s prints them); see the README's mining section.
EXPECTED = {None: (0.273, 0.278), 1.0: (0.353, 0.248), 1.02: (0.955, 0.041)}


def test_trained_tiny_model_mines_the_libreoffice_sample():
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    results = libreoffice_mining_scores(TextToEmbeddingModelPipeline(TINY_ENCODER))
    for threshold, (precision, recall) in results.items():
        print(f"threshold {threshold}: precision {precision:.3f} recall {recall:.3f}")
    for threshold, (precision, recall) in EXPECTED.items():
        got = results[threshold]
        assert got[0] >= precision - 0.03 and got[1] >= recall - 0.03, (threshold, got)


# ----------------------------------------------------------------------------------------------
# `sonar-jax mine` over `sonar-jax embed` outputs


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """eng_Latn and fra_Latn dev (200 rows each) embedded by the CLI, in shards of 64."""
    from sonar_jax import cli

    root = tmp_path_factory.mktemp("mine")
    for lang in ("eng_Latn", "fra_Latn"):
        assert cli.main(["embed", "--model", str(TINY_ENCODER), "--input",
                         str(SAMPLE / "dev" / f"{lang}.dev"), "--output", str(root / lang),
                         "--shard-rows", "64", "--quiet"]) == 0
    return root


def test_cli_mine_writes_laser_tsv_sorted_by_score(embedded, tmp_path):
    from sonar_jax import cli
    from sonar_jax.corpus.shards import EmbeddingCorpus

    out = tmp_path / "pairs.tsv"
    args = ["mine", "--src", str(embedded / "eng_Latn"), "--tgt", str(embedded / "fra_Latn"),
            "--output", str(out), "--src-lang", "eng_Latn", "--tgt-lang", "fra_Latn"]
    assert cli.main(args + ["--threshold", "1.0"]) == 0
    rows = [line.split("\t") for line in out.read_text("utf-8").splitlines()]
    scores = [float(r[0]) for r in rows]
    assert scores == sorted(scores, reverse=True) and min(scores) > 1.0 and len(rows) > 20
    eng, fra = (SAMPLE / "dev" / "eng_Latn.dev", SAMPLE / "dev" / "fra_Latn.dev")
    eng, fra = eng.read_text("utf-8").splitlines(), fra.read_text("utf-8").splitlines()
    x, y = EmbeddingCorpus(embedded / "eng_Latn"), EmbeddingCorpus(embedded / "fra_Latn")
    want = mining.mine(x.take(np.arange(len(x))), y.take(np.arange(len(y))), x_texts=eng,
                       y_texts=fra, threshold=1.0)
    assert [(r[1], r[2]) for r in rows] == [(eng[s], fra[t]) for s, t in
                                            zip(want.sources, want.targets)]
    assert cli.main(args) == 2  # the TSV exists: --overwrite to replace it
    assert cli.main(args + ["--overwrite", "--retrieval", "intersection"]) == 0


def test_cli_mine_errors_name_the_folder(embedded, tmp_path, capsys):
    import json
    import shutil

    from sonar_jax import cli

    def run(src, tgt, *extra):
        code = cli.main(["mine", "--src", str(src), "--tgt", str(tgt), "--output",
                         str(tmp_path / "pairs.tsv"), *extra])
        return code, capsys.readouterr().err

    eng, fra = embedded / "eng_Latn", embedded / "fra_Latn"
    code, err = run(eng, fra, "--src-lang", "fra_Latn")
    assert code == 1 and "holds eng_Latn sentences but --src-lang says fra_Latn" in err
    for field, value, message in (("dim", 32, "have width 64 but the embeddings in"),
                                  ("model", {"name": "other", "sha256": "0" * 64},
                                   "were embedded with different models")):
        other = tmp_path / f"other-{field}"
        shutil.copytree(fra, other)
        manifest = json.loads((other / "manifest.json").read_text())
        (other / "manifest.json").write_text(json.dumps({**manifest, field: value}))
        code, err = run(eng, other)
        assert code == 1 and message in err and str(other) in err, err
    code, err = run(eng, tmp_path / "nowhere")
    assert code == 1 and "has no manifest.json; pass the --output folder of" in err
    assert not (tmp_path / "pairs.tsv").exists()
