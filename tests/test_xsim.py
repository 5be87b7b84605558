"""xsim / xsim++ and the chunked k-NN against brute force, on random and constructed sets, and the
retrieval report over a FLORES-layout folder."""

import io
import json

import numpy as np
import pytest

from sonar_jax.evaluate import (evaluate_speech_retrieval, evaluate_text_retrieval, knn,
                                l2_normalize, run_evaluation, xsim, xsim_both_directions)
from sonar_jax.evaluate.neighbors import _chunk_top_k
from sonar_jax.evaluate.xsim import MARGINS, error_types

# --- brute force: the full similarity matrix and explicit loops -------------------------------


def brute_knn(queries, candidates, k):
    sim = np.asarray(queries, np.float64) @ np.asarray(candidates, np.float64).T
    order = [sorted(range(sim.shape[1]), key=lambda j: (-sim[i, j], j))[:k]
             for i in range(len(sim))]
    return sim, np.array(order)


def brute_xsim(x, y, margin, k=4, extra=None, texts=None):
    """LASER's definition written out: errors and predictions of sources x retrieving y."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    x = unit(np.asarray(x, np.float64))
    ys = unit(np.asarray(y if extra is None else np.concatenate([y, extra]), np.float64))
    sim, near = brute_knn(x, ys, k)
    avg_x = [np.mean(sim[i, near[i]]) for i in range(len(x))]
    avg_y = [np.mean(sorted(sim[:, j], reverse=True)[:k]) for j in range(len(ys))]
    predictions = []
    for i in range(len(x)):
        best, best_score = None, -np.inf
        for j in near[i][: 1 if margin == "absolute" else k]:
            mean = (avg_x[i] + avg_y[j]) / 2
            score = {"ratio": sim[i, j] / mean, "distance": sim[i, j] - mean,
                     "absolute": sim[i, j]}[margin]
            if score > best_score:
                best, best_score = j, score
        predictions.append(best)
    if texts is None:
        errors = sum(p != i for i, p in enumerate(predictions))
    else:
        errors = sum(texts[p] != texts[i] for i, p in enumerate(predictions))
    return errors, np.array(predictions)


def noisy_pair(rng, n, dim, noise):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x, (x + noise * rng.normal(size=x.shape)).astype(np.float32)


# --- chunked k-NN ------------------------------------------------------------------------------


@pytest.mark.parametrize("query_chunk,candidate_chunk", [(37, 53), (8, 16), (5, 7), (1, 4),
                                                         (100, 1000)])
def test_knn_equals_brute_force_for_any_chunking(query_chunk, candidate_chunk):
    rng = np.random.default_rng(1)
    queries, candidates = rng.normal(size=(37, 16)), rng.normal(size=(53, 16))
    got = knn(queries, candidates, 5, query_chunk=query_chunk, candidate_chunk=candidate_chunk)
    sim, order = brute_knn(queries.astype(np.float32), candidates.astype(np.float32), 5)
    np.testing.assert_array_equal(got.indices, order)
    np.testing.assert_allclose(got.scores, np.take_along_axis(sim, order, 1), atol=1e-5)


@pytest.mark.parametrize("candidate_chunk", [3, 4, 5, 24])
def test_knn_ties_go_to_the_lower_index_across_chunks(candidate_chunk):
    # Small integer vectors give exact dot products; each row appears three times.
    rng = np.random.default_rng(2)
    base = rng.integers(-2, 3, size=(8, 6)).astype(np.float32)
    candidates = np.concatenate([base, base, base])
    queries = rng.integers(-2, 3, size=(11, 6)).astype(np.float32)
    got = knn(queries, candidates, 7, query_chunk=4, candidate_chunk=candidate_chunk)
    _, order = brute_knn(queries, candidates, 7)
    np.testing.assert_array_equal(got.indices, order)


def test_knn_compiles_once_for_many_query_chunks():
    rng = np.random.default_rng(3)
    candidates = rng.normal(size=(50, 16))
    knn(rng.normal(size=(23, 16)), candidates, 3, query_chunk=8, candidate_chunk=16)
    before = _chunk_top_k._cache_size()
    knn(rng.normal(size=(61, 16)), candidates, 3, query_chunk=8, candidate_chunk=16)
    assert _chunk_top_k._cache_size() == before  # same chunk shapes, padded last chunk


def test_knn_refuses_bad_input():
    with pytest.raises(ValueError, match="k=6"):
        knn(np.ones((2, 3)), np.ones((5, 3)), 6)
    with pytest.raises(ValueError, match="same D"):
        knn(np.ones((2, 3)), np.ones((5, 4)), 1)
    with pytest.raises(ValueError, match="NaN"):
        l2_normalize(np.array([[1.0, np.nan]]))


# --- xsim against brute force --------------------------------------------------------------------


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("seed", [0, 1])
def test_xsim_equals_brute_force_on_random_sets(margin, seed):
    rng = np.random.default_rng(seed)
    x, y = noisy_pair(rng, 60, 16, noise=0.9)
    expected, predictions = brute_xsim(x, y, margin)
    got = xsim(x, y, margin=margin, query_chunk=16, candidate_chunk=25)
    assert 0 < expected < 60  # a set with some errors, not a trivial one
    assert got.errors == expected and got.total == 60
    assert got.error_rate == pytest.approx(100 * expected / 60)
    np.testing.assert_array_equal(got.predictions, predictions)


@pytest.mark.parametrize("margin", MARGINS)
def test_xsim_plus_plus_equals_brute_force_on_random_sets(margin):
    rng = np.random.default_rng(4)
    x, y = noisy_pair(rng, 40, 16, noise=0.7)
    extra = (y[:25] + 0.6 * rng.normal(size=(25, 16))).astype(np.float32)
    expected, predictions = brute_xsim(x, y, margin, extra=extra)
    got = xsim(x, y, extra, margin=margin, query_chunk=9, candidate_chunk=11)
    assert got.errors == expected > brute_xsim(x, y, margin)[0]
    np.testing.assert_array_equal(got.predictions, predictions)


def test_both_directions_equal_two_single_calls():
    rng = np.random.default_rng(5)
    x, y = noisy_pair(rng, 30, 16, noise=0.8)
    x_extra, y_extra = rng.normal(size=(7, 16)), rng.normal(size=(9, 16))
    for extras in ({}, {"x_extra": x_extra, "y_extra": y_extra}, {"y_extra": y_extra}):
        forward, backward = xsim_both_directions(x, y, **extras)
        np.testing.assert_array_equal(forward.predictions,
                                      xsim(x, y, extras.get("y_extra")).predictions)
        np.testing.assert_array_equal(backward.predictions,
                                      xsim(y, x, extras.get("x_extra")).predictions)


# --- constructed cases whose errors are known -----------------------------------------------------


@pytest.mark.parametrize("margin", MARGINS)
def test_exact_copies_give_no_error(margin):
    x = np.random.default_rng(6).normal(size=(50, 16))
    forward, backward = xsim_both_directions(x, 3.0 * x, margin=margin)  # scale is irrelevant
    assert forward.errors == backward.errors == 0


@pytest.mark.parametrize("margin", MARGINS)
def test_permuted_targets_are_all_wrong(margin):
    x = np.random.default_rng(7).normal(size=(20, 16))
    shift = np.roll(np.arange(20), 1)  # no sentence keeps its row
    result = xsim(x, x[shift], margin=margin)
    assert result.errors == 20 and result.error_rate == 100.0
    np.testing.assert_array_equal(shift[result.predictions], np.arange(20))


def test_hub_target_fools_cosine_but_not_the_margins():
    # Target 0 is a hub h; every other source leans towards it: x_i = e_i + 1.2 h, y_i = e_i.
    # cos(x_i, h) = 1.2/s > cos(x_i, y_i) = 1/s, but h is near every source, so its average
    # is high and both margins discount it.
    n = 6
    eye = np.eye(n)
    x = np.concatenate([eye[:1], eye[1:] + 1.2 * eye[0]])
    y = eye
    absolute, ratio, distance = (xsim(x, y, margin=m) for m in ("absolute", "ratio", "distance"))
    assert absolute.errors == n - 1 and set(absolute.predictions[1:]) == {0}
    assert ratio.errors == 0 and distance.errors == 0
    for margin, got in (("absolute", absolute), ("ratio", ratio), ("distance", distance)):
        assert got.errors == brute_xsim(x, y, margin)[0]


def _orthogonal_set(n):
    """Sources e_i, gold targets e_i + 0.5 e_{n+i} (cosine 0.894); all other cosines are 0."""
    eye = np.eye(2 * n)
    return eye[:n], eye[:n] + 0.5 * eye[n:]


@pytest.mark.parametrize("margin", MARGINS)
def test_closer_augmented_negatives_add_exactly_their_errors(margin):
    x, y = _orthogonal_set(10)
    fooled = [1, 4, 7]
    extra = x[fooled]  # cosine 1 with their source: closer than the gold target
    assert xsim(x, y, margin=margin).errors == 0
    result = xsim(x, y, extra, margin=margin)
    assert result.errors == len(fooled)
    np.testing.assert_array_equal(result.mistakes, fooled)
    np.testing.assert_array_equal(result.predictions[fooled], 10 + np.arange(3))
    assert result.errors == brute_xsim(x, y, margin, extra=extra)[0]


@pytest.mark.parametrize("margin", MARGINS)
def test_distant_augmented_negatives_change_nothing(margin):
    rng = np.random.default_rng(8)
    x, y = noisy_pair(rng, 40, 16, noise=0.9)
    pad = lambda a: np.pad(a, ((0, 0), (0, 8)))  # noqa: E731
    far = np.pad(rng.normal(size=(30, 8)), ((0, 0), (16, 0)))  # orthogonal to every sentence
    plain = xsim(x, y, margin=margin)
    with_far = xsim(pad(x), pad(y), far, margin=margin)
    np.testing.assert_array_equal(with_far.predictions, plain.predictions)


def test_error_types_follow_laser_errtype_files():
    x, y = _orthogonal_set(6)
    texts = [f"sentence {i}" for i in range(6)]
    extra_texts = ["sentence 1 with a new number", "sentence 3 negated"]
    errtypes = {extra_texts[0]: {"src": "sentence 1", "errtype": "number"},
                extra_texts[1]: {"src": "sentence 0", "errtype": "negation"}}
    result = xsim(x, y, x[[1, 3]], target_texts=texts + extra_texts)
    # Row 3 retrieved a negative made from another sentence: that is a plain misalignment.
    assert error_types(result, texts + extra_texts, errtypes) == {"number": 1, "Misaligned": 1}


def test_text_comparison_forgives_duplicate_sentences():
    x = np.random.default_rng(9).normal(size=(12, 16))
    x[5] = x[3]
    texts = [f"line {i}" for i in range(12)]
    texts[5] = texts[3]
    by_index = xsim(x, x)
    assert by_index.errors == 1 and by_index.predictions[5] == 3  # the tie goes to row 3
    assert xsim(x, x, target_texts=texts).errors == 0


def test_xsim_refuses_bad_input():
    x = np.eye(5)
    with pytest.raises(ValueError, match="as many sources as targets"):
        xsim(x, x[:4])
    with pytest.raises(ValueError, match="unknown margin"):
        xsim(x, x, margin="cosine")
    with pytest.raises(ValueError, match="at least 6"):
        xsim(x, x, k=6)
    with pytest.raises(ValueError, match="target_texts has 5 lines for 7"):
        xsim(x, x, x[:2], target_texts=["a"] * 5)
    with pytest.raises(ValueError, match="width"):
        xsim(x, x, np.ones((2, 3)))


# --- the retrieval report over a FLORES-layout folder --------------------------------------------


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def flores(tmp_path):
    """eng (pivot, with xsim++ files), fra (a faithful copy), deu (rows rotated by one)."""
    n = 8
    eye = np.eye(2 * n + 1)
    table = {}
    eng = [f"english {i}" for i in range(n)]
    fra = [f"french {i}" for i in range(n)]
    deu = [f"german {(i + 1) % n}" for i in range(n)]
    for i in range(n):
        table[eng[i]] = eye[i] + 0.5 * eye[n + i]
        table[fra[i]] = eye[i]
        table[f"german {i}"] = eye[i]
    augmented = ["english 2, altered", "english 6, altered"]
    table[augmented[0]], table[augmented[1]] = eye[2], eye[6]  # closer to fra 2 / 6 than gold
    errtypes = {augmented[0]: {"src": "english 2", "errtype": "entity"},
                augmented[1]: {"src": "english 6", "errtype": "number"}}
    for lang, lines in (("eng_Latn", eng), ("fra_Latn", fra), ("deu_Latn", deu)):
        _write(tmp_path / "devtest" / f"{lang}.devtest", lines)
    _write(tmp_path / "devtest_augmented" / "eng_Latn_augmented.devtest", augmented)
    (tmp_path / "devtest_augmented" / "eng_Latn_errtype.devtest.json").write_text(
        json.dumps(errtypes), encoding="utf-8")
    calls = []

    def embed(sentences, lang):
        calls.append(lang)
        return np.stack([table[s] for s in sentences])

    return tmp_path, embed, calls


def test_text_retrieval_report_on_a_flores_folder(flores):
    root, embed, calls = flores
    rows = evaluate_text_retrieval(embed, root, "devtest")  # every language in the folder
    got = {(r["task"], r["source"], r["target"]): r for r in rows}
    assert got["xsim", "fra_Latn", "eng_Latn"]["errors"] == 0
    assert got["xsim", "eng_Latn", "fra_Latn"]["errors"] == 0
    assert got["xsim", "deu_Latn", "eng_Latn"]["error_rate"] == 100.0
    plus = got["xsim++", "fra_Latn", "eng_Latn"]
    assert plus["errors"] == 2 and plus["total"] == 8
    assert plus["error_types"] == {"entity": 1, "number": 1}
    assert len(rows) == 6  # xsim both ways for fra and deu, xsim++ into eng for each
    assert calls.count("eng_Latn") == 2  # the pivot and its augmented set, embedded once


def test_speech_retrieval_and_run_evaluation_json(tmp_path):
    rng = np.random.default_rng(10)
    speech, text = noisy_pair(rng, 30, 16, noise=0.8)
    np.save(tmp_path / "speech.npy", speech)
    np.save(tmp_path / "text.npy", text)
    rows = evaluate_speech_retrieval(tmp_path / "speech.npy", text)
    assert rows[0]["errors"] == brute_xsim(speech, text, "ratio")[0]
    assert rows[1]["errors"] == brute_xsim(text, speech, "ratio")[0]

    out = io.StringIO()
    run_evaluation(speech_embeddings=str(tmp_path / "speech.npy"),
                   text_embeddings=str(tmp_path / "text.npy"),
                   json_path=str(tmp_path / "report.json"), out=out)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["results"] == rows
    assert saved["averages"]["xsim speech->text"] == pytest.approx(rows[0]["error_rate"])
    assert "xsim speech->text" in out.getvalue()


def test_report_refuses_bad_layouts(flores, tmp_path):
    root, embed, _ = flores
    with pytest.raises(FileNotFoundError, match="no sentences for spa_Latn"):
        evaluate_text_retrieval(embed, root, "devtest", "spa_Latn")
    _write(root / "devtest" / "ita_Latn.devtest", ["one line"])
    with pytest.raises(ValueError, match="line-aligned"):
        evaluate_text_retrieval(embed, root, "devtest", ["ita_Latn"])
    (root / "devtest_augmented" / "eng_Latn_errtype.devtest.json").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        evaluate_text_retrieval(embed, root, "devtest", ["fra_Latn"])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_evaluation(data=str(root))
