"""Denoising noise: statistics over many sentences match the configuration; the language tag and
eos are never touched; the same (seed, index) always gives the same noise."""

import json

import numpy as np
import pytest

from sonar_jax.data.noise import DenoisingNoise, keyed_rng, word_start_table
from sonar_jax.tokenizer import EOS, UNK, NllbTokenizer

LANG = 5000


def rows(n: int) -> np.ndarray:
    """[lang] + n distinct increasing piece ids + [eos], none equal to the mask id."""
    return np.concatenate([[LANG], np.arange(10, 10 + n), [EOS]]).astype(np.int32)


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model")


@pytest.fixture(scope="module")
def sentences(fixtures_dir, tokenizer):
    entries = json.loads((fixtures_dir / "spm" / "udhr_sentences.json").read_text())
    return [np.asarray(tokenizer.encode(e["text"], e["lang"]), np.int32)
            for e in entries if e["text"].strip()]


def masked_stats(out: np.ndarray, n: int) -> tuple[int, int]:
    """(pieces covered by spans, spans) of a masked row of n pieces."""
    inner = out[1:-1]
    spans = int(np.sum(inner == UNK))
    return n - (len(inner) - spans), spans


def test_span_masking_covers_the_ratio_with_poisson_spans():
    noise = DenoisingNoise()  # mBART: 35% of the pieces, Poisson(3.5) spans
    covered_share, covered, spans = [], 0, 0
    for n in (7, 23, 60, 200):
        for index in range(250):
            out = noise(rows(n), keyed_rng(0, n, index))
            assert out[0] == LANG and out[-1] == EOS
            inner = out[1:-1]
            assert not np.any((inner[1:] == UNK) & (inner[:-1] == UNK)), "spans touch"
            kept = inner[inner != UNK]
            assert np.all(np.diff(kept) > 0), "unmasked pieces lost their order"
            k, m = masked_stats(out, n)
            covered_share.append(k / n)
            if n == 200:
                covered, spans = covered + k, spans + m
    assert abs(np.mean(covered_share) - 0.35) < 0.01
    # Zero-length draws are skipped: spans average lambda / (1 - e^-lambda) = 3.61, a little less
    # because the last span of each row is cut to the count.
    assert 3.35 < covered / spans < 3.65


def test_span_length_follows_lambda():
    covered, spans = 0, 0
    for index in range(200):
        k, m = masked_stats(DenoisingNoise(poisson_lambda=8.0)(rows(300), keyed_rng(1, index)), 300)
        covered, spans = covered + k, spans + m
    assert 7.3 < covered / spans < 8.2


def test_noise_is_a_function_of_seed_and_index():
    noise = DenoisingNoise(word_drop=0.0, shuffle_distance=2)
    a = noise(rows(50), keyed_rng(7, 3))
    assert np.array_equal(a, noise(rows(50), keyed_rng(7, 3)))
    assert not np.array_equal(a, noise(rows(50), keyed_rng(7, 4)))
    assert not np.array_equal(a, noise(rows(50), keyed_rng(8, 3)))


def test_word_drop_deletes_whole_words_at_the_rate(tokenizer, sentences):
    table = word_start_table(tokenizer.spm_path, tokenizer.vocab_size)
    assert table[tokenizer.encode("Everyone", "eng_Latn")[1]]  # "▁Everyone" starts a word
    assert not table[[0, 1, 2, 3, tokenizer.lang_id("eng_Latn")]].any()
    noise = DenoisingNoise(mask_ratio=0.0, word_drop=0.2, word_start=table)

    def words(pieces):
        starts = table[pieces]
        starts[:1] = True
        return np.split(pieces, np.flatnonzero(starts)[1:]) if len(pieces) else []

    kept, total = 0, 0
    for index in range(40):
        for number, tokens in enumerate(sentences):
            out = noise(tokens, keyed_rng(0, index, number))
            assert out[0] == tokens[0] and out[-1] == EOS
            before = [tuple(w) for w in words(tokens[1:-1])]
            after = [tuple(w) for w in words(out[1:-1])]
            it = iter(before)
            assert all(word in it for word in after), "output is not a subsequence of words"
            kept, total = kept + len(after), total + len(before)
    assert abs(1 - kept / total - 0.2) < 0.02


def test_local_shuffle_moves_pieces_at_most_k():
    noise = DenoisingNoise(mask_ratio=0.0, shuffle_distance=3)
    moved = 0
    for index in range(200):
        source = rows(40)
        out = noise(source, keyed_rng(2, index))
        assert out[0] == LANG and out[-1] == EOS
        assert sorted(out[1:-1]) == sorted(source[1:-1])
        displacement = np.abs(np.arange(40) - (out[1:-1] - 10))
        assert displacement.max() <= 3
        moved += int(np.count_nonzero(displacement))
    assert moved > 200 * 40 * 0.5


def test_rows_without_pieces_stay_as_they_are():
    noise = DenoisingNoise(shuffle_distance=2)
    for tokens in ([LANG, EOS], [EOS]):
        assert noise(tokens, keyed_rng(0)).tolist() == tokens


def test_full_masking_leaves_one_mask():
    out = DenoisingNoise(mask_ratio=1.0)(rows(12), keyed_rng(0))
    assert out.tolist() == [LANG, UNK, EOS]


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="mask_ratio"):
        DenoisingNoise(mask_ratio=1.5)
    with pytest.raises(ValueError, match="word_start table"):
        DenoisingNoise(word_drop=0.1)
    with pytest.raises(ValueError, match="shuffle_distance"):
        DenoisingNoise(shuffle_distance=-1)
