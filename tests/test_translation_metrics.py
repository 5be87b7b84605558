"""BLEU / chrF / chrF++ against sacrebleu called directly, the tokenizer chosen per language, and
the translation report (table, averages, JSON)."""

import io
import json

import numpy as np
import pytest
import sacrebleu

from sonar_jax.evaluate import (bleu_tokenizer, evaluate_speech_translation,
                                evaluate_text_retrieval, evaluate_translation, format_table,
                                run_evaluation, translation_scores, write_json)
from sonar_jax.evaluate.report import averages
from sonar_jax.tokenizer import DEFAULT_LANGS_FILE

FRA_REFS = ["Le chat est assis sur le tapis.", "Il fait beau aujourd'hui à Paris.",
            "Les enfants jouent dans le jardin."]
FRA_HYPS = ["Le chat est sur le tapis.", "Il fait très beau aujourd'hui à Paris.",
            "Des enfants jouent au jardin."]
ZHO_REFS = ["今天天气很好。", "我喜欢读书。"]
ZHO_HYPS = ["今天天气不错。", "我很喜欢读书。"]


@pytest.mark.parametrize("lang,expected", [
    ("zho_Hans", "zh"), ("zho_Hant", "zh"), ("yue_Hant", "zh"),
    ("jpn_Jpan", "char"), ("kor_Hang", "char"), ("tha_Thai", "char"), ("lao_Laoo", "char"),
    ("khm_Khmr", "char"), ("mya_Mymr", "char"), ("bod_Tibt", "char"),
    ("eng_Latn", "13a"), ("rus_Cyrl", "13a"), ("arb_Arab", "13a"), ("hin_Deva", "13a"),
    ("amh_Ethi", "13a"),
])
def test_tokenizer_per_language(lang, expected):
    assert bleu_tokenizer(lang) == expected


def test_no_released_language_gets_a_tokenizer_that_downloads():
    langs = DEFAULT_LANGS_FILE.read_text(encoding="utf-8").split()
    assert len(langs) == 202
    assert {bleu_tokenizer(lang) for lang in langs} == {"13a", "zh", "char"}


def test_bad_language_code_is_refused():
    with pytest.raises(ValueError, match="lang_Script"):
        bleu_tokenizer("french")


def test_scores_equal_sacrebleu_called_directly():
    got = translation_scores(FRA_HYPS, FRA_REFS, "fra_Latn")
    assert got["tokenize"] == "13a" and got["sentences"] == 3
    assert got["bleu"] == sacrebleu.corpus_bleu(FRA_HYPS, [FRA_REFS], tokenize="13a").score
    assert got["chrf"] == sacrebleu.corpus_chrf(FRA_HYPS, [FRA_REFS]).score
    assert got["chrf++"] == sacrebleu.corpus_chrf(FRA_HYPS, [FRA_REFS], word_order=2).score
    assert 0 < got["bleu"] < 100 and got["chrf"] != got["chrf++"]


def test_chinese_is_scored_on_characters():
    got = translation_scores(ZHO_HYPS, ZHO_REFS, "zho_Hans")
    assert got["tokenize"] == "zh"
    assert got["bleu"] == sacrebleu.corpus_bleu(ZHO_HYPS, [ZHO_REFS], tokenize="zh").score
    # Unsegmented, each sentence is one "word" under 13a: no n-gram matches at all.
    assert sacrebleu.corpus_bleu(ZHO_HYPS, [ZHO_REFS], tokenize="13a").score == 0
    assert got["bleu"] > 20


def test_tokenizer_override_and_perfect_output():
    got = translation_scores(FRA_HYPS, FRA_REFS, "fra_Latn", tokenize="intl")
    assert got["tokenize"] == "intl"
    assert got["bleu"] == sacrebleu.corpus_bleu(FRA_HYPS, [FRA_REFS], tokenize="intl").score
    perfect = translation_scores(FRA_REFS, FRA_REFS, "fra_Latn")
    assert [perfect[m] for m in ("bleu", "chrf", "chrf++")] == pytest.approx([100] * 3)


def test_mismatched_or_empty_input_is_refused():
    with pytest.raises(ValueError, match="2 hypotheses for 3 references"):
        translation_scores(FRA_HYPS[:2], FRA_REFS, "fra_Latn")
    with pytest.raises(ValueError, match="no sentences"):
        translation_scores([], [], "fra_Latn")


@pytest.fixture
def flores(tmp_path):
    texts = {"eng_Latn": ["The cat sits on the mat.", "It is sunny in Paris today.",
                          "The children play in the garden."],
             "fra_Latn": FRA_REFS, "zho_Hans": ["猫坐在垫子上。", *ZHO_REFS]}
    (tmp_path / "dev").mkdir()
    for lang, lines in texts.items():
        (tmp_path / "dev" / f"{lang}.dev").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path, texts


def test_translation_report_scores_each_direction(flores):
    root, texts = flores
    outputs = {("eng_Latn", "fra_Latn"): FRA_HYPS,
               ("eng_Latn", "zho_Hans"): ["猫坐在垫子上。", *ZHO_HYPS]}
    calls = []

    def translate(sentences, src, tgt):
        calls.append((src, tgt))
        return outputs.get((src, tgt), texts[tgt])  # into English: perfect

    rows = evaluate_translation(translate, root, "dev", "fra_Latn,zho_Hans")
    assert calls == [("fra_Latn", "eng_Latn"), ("eng_Latn", "fra_Latn"),
                     ("zho_Hans", "eng_Latn"), ("eng_Latn", "zho_Hans")]
    got = {(r["source"], r["target"]): r for r in rows}
    assert got["fra_Latn", "eng_Latn"]["bleu"] == pytest.approx(100)
    assert got["eng_Latn", "fra_Latn"] == {
        "task": "translation", "language": "fra_Latn", "source": "eng_Latn",
        "target": "fra_Latn", **translation_scores(FRA_HYPS, FRA_REFS, "fra_Latn")}
    assert got["eng_Latn", "zho_Hans"]["tokenize"] == "zh"

    mean = averages(rows)
    assert mean["BLEU eng_Latn->X"] == pytest.approx(
        (got["eng_Latn", "fra_Latn"]["bleu"] + got["eng_Latn", "zho_Hans"]["bleu"]) / 2)
    table = format_table(rows).splitlines()
    assert table[0].split() == ["language", "BLEU", "X->eng_Latn", "chrF++", "X->eng_Latn",
                                "BLEU", "eng_Latn->X", "chrF++", "eng_Latn->X"]
    assert [line.split()[0] for line in table[2:]] == ["fra_Latn", "zho_Hans", "average"]
    assert table[2].split()[1] == "100.00"


def test_table_and_json_hold_retrieval_and_translation(flores, tmp_path):
    root, texts = flores
    rng = np.random.default_rng(0)
    vectors = {s: rng.normal(size=8) for lines in texts.values() for s in lines}
    for eng, fra in zip(texts["eng_Latn"], texts["fra_Latn"]):
        vectors[fra] = vectors[eng]  # French retrieves perfectly; Chinese is noise
    embed = lambda sentences, lang: np.stack([vectors[s] for s in sentences])  # noqa: E731
    rows = evaluate_text_retrieval(embed, root, "dev", ["fra_Latn", "zho_Hans"], k=2)
    rows += evaluate_translation(lambda s, src, tgt: texts[tgt], root, "dev", ["fra_Latn"])
    table = format_table(rows)
    assert "xsim X->eng_Latn" in table and "BLEU eng_Latn->X" in table
    zho = next(line for line in table.splitlines() if line.startswith("zho_Hans"))
    assert zho.split()[-1] == "-"  # no translation row for Chinese
    write_json(tmp_path / "out.json", rows, {"split": "dev"})
    saved = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert saved["settings"] == {"split": "dev"} and saved["results"] == rows
    pooled = [r for r in rows if r["task"] == "xsim" and r["source"] != "eng_Latn"]
    assert saved["averages"]["xsim X->eng_Latn"] == pytest.approx(
        100 * sum(r["errors"] for r in pooled) / sum(r["total"] for r in pooled))


@pytest.mark.slow
def test_run_evaluation_end_to_end_with_converted_models(flores, tmp_path, fixtures_dir):
    from sonar_jax.convert import convert_checkpoint
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    root, texts = flores
    spm = fixtures_dir / "spm" / "udhr.spm.model"
    dirs = {kind: convert_checkpoint(fixtures_dir / "text" / f"tiny_text_{kind}.pt",
                                     tmp_path / kind, f"text_{kind}", tokenizer=spm, num_heads=4)
            for kind in ("encoder", "decoder")}
    out = io.StringIO()
    rows = run_evaluation(data=str(root), split="dev", langs="fra_Latn",
                          encoder=str(dirs["encoder"]), decoder=str(dirs["decoder"]), k=2,
                          beam_size=1, max_seq_len=12, json_path=str(tmp_path / "r.json"),
                          progress=False, out=out)
    assert [(r["task"], r["source"], r["target"]) for r in rows] == [
        ("xsim", "fra_Latn", "eng_Latn"), ("xsim", "eng_Latn", "fra_Latn"),
        ("translation", "fra_Latn", "eng_Latn"), ("translation", "eng_Latn", "fra_Latn")]
    embedder = TextToEmbeddingModelPipeline(dirs["encoder"])
    direct = evaluate_text_retrieval(embedder, root, "dev", "fra_Latn", k=2)
    assert rows[:2] == direct
    assert "average" in out.getvalue()
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["max_seq_len"] == 12


class _EchoSpeech:
    """A stand-in speech-to-text pipeline: 'decodes' each clip to a fixed text."""

    def __init__(self, outputs):
        self.outputs, self.calls = outputs, []

    def predict(self, audio, target_lang, batch_size, **generation):
        self.calls.append((list(audio), target_lang, generation))
        return self.outputs


def test_speech_translation_scores_the_decoded_clips():
    refs = ["the cat sat on the mat", "a dog barks"]
    echo = _EchoSpeech(["the cat sat on a mat", "a dog barks"])
    (row,) = evaluate_speech_translation(echo, ["a.wav", "b.wav"], refs, "eng_Latn", beam_size=2)
    expected = translation_scores(echo.outputs, refs, "eng_Latn")
    assert row["source"] == "speech" and row["target"] == "eng_Latn"
    assert row["bleu"] == expected["bleu"] and row["chrf++"] == expected["chrf++"]
    assert echo.calls == [(["a.wav", "b.wav"], "eng_Latn", {"beam_size": 2})]
    with pytest.raises(ValueError, match="2 clips for 1 references"):
        evaluate_speech_translation(echo, ["a.wav", "b.wav"], refs[:1], "eng_Latn")


def test_run_evaluation_scores_speech_to_text_from_a_manifest(tmp_path):
    import pathlib

    from flax import nnx

    from sonar_jax.configs.architectures import speech_model_config
    from sonar_jax.model_dir import write_model_dir
    from sonar_jax.models.speech_encoder import SpeechEncoder
    from sonar_jax.speech_pipelines import SpeechToTextModelPipeline

    repo = pathlib.Path(__file__).resolve().parents[1]
    speech = repo / "data/sample/speech/fillets/speech"
    lines = (speech / "nld_Latn.dev.tsv").read_text(encoding="utf-8").splitlines()[:4]
    manifest = tmp_path / "clips.tsv"
    manifest.write_text("\n".join([lines[0]] + [f"{speech}/{line}" for line in lines[1:]]) + "\n",
                        encoding="utf-8")
    cfg = speech_model_config("speech_student_tiny")
    encoder = write_model_dir(tmp_path / "speech", "speech_encoder", cfg,
                              nnx.to_pure_dict(nnx.state(SpeechEncoder(cfg, rngs=nnx.Rngs(0)))),
                              None)
    decoder = repo / "tests/fixtures/trained/main_job_tiny/decoder"
    rows = run_evaluation(speech_encoder=str(encoder), decoder=str(decoder),
                          speech_manifest=str(manifest), beam_size=1, out=io.StringIO(),
                          json_path=str(tmp_path / "r.json"))
    (row,) = rows
    outputs = SpeechToTextModelPipeline(encoder, decoder).predict(
        [str(speech / line.split("\t")[0]) for line in lines[1:]], target_lang="nld_Latn",
        batch_size=32, beam_size=1)
    texts = [line.split("\t")[1] for line in lines[1:]]
    assert row["language"] == "nld_Latn" and row["target"] == "nld_Latn"  # the clips' language
    assert row["chrf++"] == translation_scores(outputs, texts, "nld_Latn")["chrf++"]
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["speech_manifest"]
