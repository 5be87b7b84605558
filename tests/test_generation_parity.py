"""Beam search parity with the official SONAR pipelines (tests/fixtures/generation, made by
tests/reference/make_generation_fixtures.py): identical token ids and strings for
EmbeddingToTextModelPipeline (beam 1 and 5, several languages and length limits) and
TextToTextModelPipeline. Cases with the default (long) limit run with `-m slow`."""

import json

import numpy as np
import pytest

from sonar_jax import batching, pipelines
from sonar_jax.convert import convert_checkpoint

GEN = "generation"


def _cases():
    from conftest import FIXTURES

    cases = json.loads((FIXTURES / GEN / "cases.json").read_text())["cases"]
    marks = lambda c: [pytest.mark.slow] if _limit(c) is None else []
    return [pytest.param(c, id=f"{c['pipeline'][:11]}-{i}", marks=marks(c))
            for i, c in enumerate(cases)]


def _limit(case):
    """The case's length limit if it keeps generation short, else None (a slow case)."""
    kwargs = case.get("generator_kwargs", case.get("generator_kwargs_passed", {}))
    if "max_gen_len" in kwargs:
        return 2 + int(kwargs["max_gen_len"][0] * 128 + kwargs["max_gen_len"][1])
    return kwargs.get("max_seq_len")


@pytest.fixture(scope="module")
def models(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("gen")
    spm = fixtures_dir / "spm" / "udhr.spm.model"
    enc = convert_checkpoint(fixtures_dir / "text" / "mid_text_encoder.pt", out / "enc",
                             "text_encoder", tokenizer=spm, num_heads=8)
    dec = convert_checkpoint(fixtures_dir / GEN / "mid_gen_decoder.pt", out / "dec",
                             "text_decoder", tokenizer=spm, num_heads=8)
    return {"e2t": pipelines.EmbeddingToTextModelPipeline(dec),
            "t2t": pipelines.TextToTextModelPipeline(enc, dec)}


@pytest.mark.parametrize("case", _cases())
def test_generation_matches_reference(models, fixtures_dir, case):
    kwargs = dict(case.get("generator_kwargs", case.get("generator_kwargs_passed", {})))
    if case["pipeline"] == "EmbeddingToTextModelPipeline":
        embeddings = np.load(fixtures_dir / GEN / "inputs.npz")["embeddings"]
        e2t = models["e2t"]
        texts = e2t.predict(embeddings, case["target_lang"], batch_size=case["batch_size"],
                            **kwargs)
        lang_id = e2t.tokenizer.lang_id(case["target_lang"])
        options = pipelines.GenerationOptions.of(**kwargs)
        limit = e2t.max_len_for(embeddings.shape[1], options.max_seq_len, options.max_gen_len)
        batches = list(batching.in_order(embeddings, case["batch_size"]))
        ids = e2t.generate_batches(embeddings, batches, lang_id, options.config(),
                                   [limit] * len(batches), 0, False)
        for got, result in zip(ids, case["results"]):
            assert got + [3] == result["tokens"] or got == result["tokens"]
    else:
        sources = [r["source_text"] for r in case["results"]]
        texts = models["t2t"].predict(sources, case["source_lang"], case["target_lang"],
                                      batch_size=case["batch_size"], **kwargs)
    assert texts == case["texts"]
