"""Pipelines: input order, batching, shape buckets, data parallelism, bad input, CLI streaming."""

import logging
import platform

import jax
import numpy as np
import pytest

from sonar_jax import pipelines
from sonar_jax.cli import main as cli_main
from sonar_jax.generate import TopKSampler


@pytest.fixture(scope="module")
def model_dirs(mid_text_dirs):
    return mid_text_dirs


@pytest.fixture(scope="module")
def t2e(model_dirs):
    return pipelines.TextToEmbeddingModelPipeline(model_dirs["encoder"])


@pytest.fixture(scope="module")
def e2t(model_dirs):
    return pipelines.EmbeddingToTextModelPipeline(model_dirs["decoder"])


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return np.load(fixtures_dir / "text" / "mid_text_encoder_io.npz")


def test_embeddings_match_reference_pipeline_in_input_order(t2e, reference):
    for lang in sorted(set(reference["pipeline_langs"])):
        rows = np.flatnonzero(reference["pipeline_langs"] == lang)
        texts = [str(t) for t in reference["pipeline_texts"][rows]]
        for kwargs in (dict(batch_size=2), dict(batch_size=None, batch_max_tokens=300),
                       dict(batch_size=3, batch_max_tokens=64)):
            got = t2e.predict(texts, lang, **kwargs)
            np.testing.assert_allclose(got, reference["pipeline_embeddings"][rows], atol=1e-5)


def test_text_file_input(t2e, reference, tmp_path):
    rows = np.flatnonzero(reference["pipeline_langs"] == "eng_Latn")
    texts = [str(t) for t in reference["pipeline_texts"][rows]]
    path = tmp_path / "in.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    np.testing.assert_allclose(t2e.predict(path, "eng_Latn"),
                               reference["pipeline_embeddings"][rows], atol=1e-5)


def test_mixed_lengths_compile_a_handful_of_programs(t2e):
    rng = np.random.default_rng(0)
    words = ["rights", "freedom", "dignity", "all", "human", "beings", "born", "equal"]
    sentences = [" ".join(rng.choice(words, size=rng.integers(1, 120))) for _ in range(60)]
    before = pipelines.encode_program._cache_size()
    t2e.predict(sentences, "eng_Latn", batch_size=7)
    compiled = pipelines.encode_program._cache_size() - before
    assert 1 <= compiled <= 6, compiled  # length buckets 8..256 at one row bucket


def test_sharding_over_8_devices_equals_one_device(model_dirs, reference):
    assert jax.local_device_count() == 8
    texts = [str(t) for t in reference["pipeline_texts"]]
    one = pipelines.TextToEmbeddingModelPipeline(model_dirs["encoder"],
                                                 devices=jax.local_devices()[:1])
    eight = pipelines.TextToEmbeddingModelPipeline(model_dirs["encoder"])
    assert eight.parallel.size == 8
    np.testing.assert_allclose(eight.predict(texts, "eng_Latn", batch_size=5),
                               one.predict(texts, "eng_Latn", batch_size=5), atol=1e-5)


def test_empty_string_encodes_as_lang_eos(t2e):
    assert t2e.tokenize([""], "eng_Latn") == [[t2e.tokenizer.lang_id("eng_Latn"), 3]]
    assert np.isfinite(t2e.predict([""], "eng_Latn")).all()


def test_bad_text_input(t2e):
    with pytest.raises(TypeError, match=r"input\[1\] is a int"):
        t2e.predict(["fine", 3], "eng_Latn")
    with pytest.raises(ValueError, match="eng_Latn"):
        t2e.predict(["fine"], "eng_latn")
    with pytest.raises(FileNotFoundError):
        t2e.predict("no/such/file.txt", "eng_Latn")
    with pytest.raises(ValueError, match="exceeds the encoder's 514"):
        t2e.predict(["x"], "eng_Latn", max_seq_len=600)


def test_long_text_is_truncated_with_one_counting_warning(t2e, caplog):
    long = " ".join(["dignity"] * 400)
    with caplog.at_level(logging.WARNING, logger="sonar_jax.pipelines"):
        out = t2e.predict([long, "short", long], "eng_Latn", max_seq_len=32)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3" in warnings[0].getMessage()
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)


def test_bad_embeddings_are_refused(e2t):
    with pytest.raises(ValueError, match=r"shape \[N, 128\]"):
        e2t.predict(np.zeros((2, 64), np.float32), "fra_Latn")
    bad = np.zeros((3, 128), np.float32)
    bad[1, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[1\]"):
        e2t.predict(bad, "fra_Latn")


def test_greedy_sampling_equals_beam_one(e2t, reference):
    emb = reference["sentence_embeddings"][:4]
    greedy = e2t.predict(emb, "fra_Latn", beam_size=1, max_seq_len=12)
    topk1 = e2t.predict(emb, "fra_Latn", sampler=TopKSampler(1), max_seq_len=12)
    assert greedy == topk1


def test_generation_options_are_checked_before_any_work(e2t, reference):
    emb = reference["sentence_embeddings"][:2]
    with pytest.raises(TypeError, match=r"unknown generation options \['beam'\]"):
        e2t.predict(emb, "fra_Latn", beam=3)
    with pytest.raises(TypeError, match="sampler must be"):
        e2t.predict(emb, "fra_Latn", sampler=3)
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        e2t.predict(emb, "fra_Latn", beam_size=0)


def test_sampling_is_seeded(e2t, reference):
    emb = reference["sentence_embeddings"][:4]
    kwargs = dict(sampler="full", max_seq_len=12, temperature=2.0)
    first = e2t.predict(emb, "fra_Latn", seed=1, **kwargs)
    assert first == e2t.predict(emb, "fra_Latn", seed=1, **kwargs)
    assert first != e2t.predict(emb, "fra_Latn", seed=2, **kwargs)


def test_cli_encode_decode_translate_on_files(model_dirs, t2e, tmp_path, capsys):
    sentences = ["All human beings are born free.", "", "Everyone has the right to life."]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    npy = tmp_path / "emb.npy"
    assert cli_main(["encode", "--model", str(model_dirs["encoder"]), "--lang", "eng_Latn",
                     "--input", str(src), "--output", str(npy), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(npy), t2e.predict(sentences, "eng_Latn"), atol=1e-5)
    assert cli_main(["encode", "--model", str(model_dirs["encoder"]), "--lang", "eng_Latn",
                     "--input", str(src), "--output", str(npy), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err

    out = tmp_path / "out.txt"
    assert cli_main(["decode", "--model", str(model_dirs["decoder"]), "--lang", "fra_Latn",
                     "--input", str(npy), "--output", str(out), "--max-seq-len", "8",
                     "--beam-size", "2", "--quiet"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    out2 = tmp_path / "translated.txt"
    assert cli_main(["translate", "--encoder", str(model_dirs["encoder"]), "--decoder",
                     str(model_dirs["decoder"]), "--src", "eng_Latn", "--tgt", "deu_Latn",
                     "--input", str(src), "--output", str(out2), "--max-seq-len", "8",
                     "--quiet"]) == 0
    assert len(out2.read_text(encoding="utf-8").splitlines()) == 3


def test_compiled_encoder_reads_each_layer_weight_in_place_with_one_qkv_product(t2e):
    """The pipeline's compiled encoder (layers unrolled from the stack at load): one q/k/v
    product per layer (none of q, k, v alone), the pooling as a product, and no instruction that
    copies, slices or re-stacks a layer's weights (so no weight has a leading layers axis inside
    the program)."""
    import jax.numpy as jnp

    from benchmarks import hlo

    cfg = t2e.model.cfg
    rows, length = 4, 8  # rows·length differs from every weight dimension
    text = pipelines.encode_program.lower(t2e._encoder, jnp.ones((rows, length), jnp.int32),
                                          jnp.full((rows,), length, jnp.int32)).compile().as_text()
    assert hlo.while_bodies(text) == []
    dim, ffn = cfg.model_dim, cfg.ffn_dim
    products = [i for i, _ in hlo.dots(text)]
    # The mean over positions is a product with the mask (see layers.masked_mean).
    pooling = [i for i in products if tuple(i.arrays()[0][1]) == (rows, 2, dim)]
    assert len(pooling) == 1
    widths = [i.arrays()[0][1][-1] for i in products if i not in pooling]
    assert widths.count(3 * dim) == cfg.num_layers  # fused q/k/v
    assert widths.count(ffn) == cfg.num_layers  # FFN in
    assert widths.count(dim) == 2 * cfg.num_layers  # attention out and FFN out, nothing more

    computations, entry = hlo.parse(text)
    weights = {(dim, 3, dim), (dim, 3 * dim), (dim, dim), (dim, ffn), (ffn, dim)}
    for instruction in computations[entry]:
        shapes = {dims for _, dims in instruction.arrays() if dims}
        if instruction.opcode == "parameter":
            assert not any(dims[0] == cfg.num_layers and dims[1:] in weights for dims in shapes)
        elif instruction.opcode not in hlo.PLUMBING:
            assert not shapes & weights, f"{instruction.name} {instruction.shape} copies a weight"


def _cpu_program_text(jitted, args, **option_overrides) -> str:
    """Optimized HLO of an `inference_jit` program as the pipelines compile it for CPU, or with
    some of its options overridden (so a structural test can show its check fails without one)."""
    from sonar_jax.compiled import compiler_options

    program = jitted.program("cpu")
    if option_overrides:
        program = jax.jit(jitted.__wrapped__, **jitted.jit_kwargs,
                          compiler_options={**compiler_options("cpu"), **option_overrides})
    return program.lower(*args).compile().as_text()


def test_compiled_encoder_reductions_fuse_on_cpu(t2e):
    """On CPU the encoder compiles without XLA's tree-reduction rewrite (`sonar_jax.compiled`):
    no LayerNorm or softmax reduction becomes an unfused reduce-window pass; the same program
    compiled with the pass has them, so the check can fail."""
    import jax.numpy as jnp

    rows, length = 4, 40  # softmax rows of 40 keys and LayerNorm rows of model_dim > 32
    args = (t2e._encoder, jnp.ones((rows, length), jnp.int32), jnp.full((rows,), length, jnp.int32))
    ours = _cpu_program_text(pipelines.encode_program, args)
    assert "reduce-window" not in ours
    assert "reduce-window" in _cpu_program_text(pipelines.encode_program, args,
                                                xla_disable_hlo_passes="")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="XLA:CPU links oneDNN on x86 only")
@pytest.mark.parametrize("program", ["encoder", "generation"])
def test_compiled_inference_programs_run_every_product_in_onednn_on_cpu(t2e, program):
    """On CPU the inference programs hand every matrix product to oneDNN (`sonar_jax.compiled`):
    the layers' GEMMs and attention's batched products; compiled without the option, none."""
    import jax.numpy as jnp
    from flax import nnx

    from benchmarks import hlo
    from sonar_jax.configs.architectures import text_model_config
    from sonar_jax.generate import GenerationConfig, _generate_jit
    from sonar_jax.models.text_decoder import TextDecoder
    from sonar_jax.split import SplitModule

    if program == "encoder":
        jitted = pipelines.encode_program
        args = (t2e._encoder, jnp.ones((4, 16), jnp.int32), jnp.full((4,), 16, jnp.int32))
    else:
        jitted = _generate_jit
        cfg = text_model_config("text_tiny", "decoder").replace(num_layers=2)
        decoder = SplitModule.of(TextDecoder(cfg, rngs=nnx.Rngs(0)))
        args = (decoder, jnp.zeros((3, cfg.model_dim)), jnp.full((3,), 5, jnp.int32),
                jnp.int32(12), jax.random.key(0), GenerationConfig(capacity=12, beam_size=2))
    inside, products = hlo.library_dots(_cpu_program_text(jitted, args), "__onednn_fusion")
    assert products >= 6 and inside == products, (inside, products)
    eigen = _cpu_program_text(jitted, args, xla_cpu_use_onednn=False)
    assert hlo.library_dots(eigen, "__onednn_fusion")[0] == 0


@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_embedding_batches_queue_the_next_program_before_reading_a_result(monkeypatch, backend):
    """`embed_batches` (text and speech pipelines): on an accelerator batch i's embeddings are
    read back only once batch i + 1's program is queued, so the device never waits for the host
    in between; on CPUs (whose client would run both programs at once on the same cores) each
    is read before the next runs. Results come back in order, padding rows dropped."""
    events = []
    monkeypatch.setattr(jax, "default_backend", lambda: backend)

    class Result:
        def __init__(self, batch):
            self.batch = batch

        def __array__(self, dtype=None, copy=None):
            events.append(("read", self.batch))
            return np.full((4, 2), self.batch, np.float32)

    def program(encoder, inputs, lengths):
        events.append(("run", int(inputs)))
        return Result(int(inputs))

    monkeypatch.setattr(pipelines, "encode_program", program)
    batches = [(np.arange(3) + 3 * i, i, None) for i in range(3)]
    out = list(pipelines.embed_batches(None, iter(batches)))
    assert events == ([("run", 0), ("run", 1), ("read", 0), ("run", 2), ("read", 1),
                       ("read", 2)] if backend == "gpu" else
                      [("run", 0), ("read", 0), ("run", 1), ("read", 1), ("run", 2),
                       ("read", 2)])
    assert [indices.tolist() for indices, _ in out] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert all(e.shape == (3, 2) and (e == i).all() for i, (_, e) in enumerate(out))
