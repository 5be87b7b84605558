"""Token ids identical to fairseq2's NLLB tokenizer (tests/fixtures/text/tokens.json, made by the
reference) for sentences in 12 scripts plus edge cases, in source and target mode."""

import json
import pathlib

import pytest

from sonar_jax.tokenizer import (NllbTokenizer, UnknownLanguageError, read_langs,
                                 train_sentencepiece)


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return json.loads((fixtures_dir / "text" / "tokens.json").read_text())


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model")


def test_special_and_language_ids(tokenizer, reference):
    info = reference["tokenizer"]
    assert tokenizer.langs == info["langs"]
    assert tokenizer.vocab_size == info["vocab_size"]
    assert (tokenizer.pad_idx, tokenizer.unk_idx, tokenizer.bos_idx, tokenizer.eos_idx) == (
        info["pad_idx"], info["unk_idx"], info["bos_idx"], info["eos_idx"])
    for lang, token in info["lang_ids"].items():
        assert tokenizer.lang_id(lang) == token
    for tag, token in info["data_tag_ids"].items():
        assert tokenizer.data_tag_id(tag) == token


def test_ids_and_decoding_match_reference(tokenizer, reference):
    sentences = reference["sentences"]
    assert len({s["lang"].split("_")[1] for s in sentences}) >= 5
    for sentence in sentences:
        text, lang = sentence["text"], sentence["lang"]
        assert tokenizer.encode(text, lang, "source") == sentence["source_ids"], text
        assert tokenizer.encode(text, lang, "target") == sentence["target_ids"], text
        assert tokenizer.decode(sentence["target_ids"]) == sentence["decoded"], text
        assert tokenizer.decode(sentence["source_ids"]) == sentence["decoded_source"], text


def test_batch_encoding_equals_single(tokenizer, reference):
    texts = [s["text"] for s in reference["sentences"][:6]]
    assert tokenizer.encode_batch(texts, "fra_Latn") == [
        tokenizer.encode(t, "fra_Latn") for t in texts]


def test_unknown_language_names_it_and_suggests(tokenizer):
    with pytest.raises(UnknownLanguageError, match=r"'fra_latn'.*fra_Latn"):
        tokenizer.encode("Bonjour", "fra_latn")
    with pytest.raises(UnknownLanguageError, match="'xx'"):
        tokenizer.lang_id("xx")


def test_custom_language_list_moves_ids(fixtures_dir):
    tokenizer = NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model", ["eng_Latn", "fra_Latn"])
    assert tokenizer.lang_id("fra_Latn") == 3001 + 1
    assert tokenizer.vocab_size == 3001 + 2 + 3
    with pytest.raises(UnknownLanguageError):
        tokenizer.lang_id("deu_Latn")


def test_default_language_list_is_the_released_one():
    langs = read_langs()
    assert len(langs) == 202 and langs[0] == "ace_Arab" and langs[-1] == "zul_Latn"


def test_bad_mode_and_missing_model(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown mode"):
        tokenizer.encode("x", "eng_Latn", mode="both")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NllbTokenizer(tmp_path / "missing.model")


def test_trained_sentencepiece_fills_the_vocabulary_exactly(tmp_path):
    sample = pathlib.Path(__file__).resolve().parents[1] / "data/sample/libreoffice/train"
    lines = [line for path in sorted(sample.glob("*.train"))[:4]
             for line in path.read_text(encoding="utf-8").splitlines()]
    langs = ["eng_Latn", "deu_Latn", "ell_Grek"]
    tokenizer = train_sentencepiece(lines, tmp_path / "a.model", vocab_size=1200, langs=langs)
    assert tokenizer.vocab_size == 1200 and tokenizer.lang_id("ell_Grek") == 1200 - 3 - 1
    ids = tokenizer.encode(lines[0], "deu_Latn")
    assert ids[0] == tokenizer.lang_id("deu_Latn") and ids[-1] == 3 and max(ids) < 1200
    assert tokenizer.decode(ids) == lines[0]
    # Deterministic: the same text gives the same model.
    train_sentencepiece(lines, tmp_path / "b.model", vocab_size=1200, langs=langs)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    with pytest.raises(ValueError, match="raise it"):
        train_sentencepiece(lines, tmp_path / "c.model", vocab_size=210)
