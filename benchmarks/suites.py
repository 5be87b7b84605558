"""The two suites (shapes and dtypes of every workload) and the random models they run.

`cpu`: the `small` text model (512-d, 6 + 6 layers, 8 heads, FFN 2048) and a mid speech encoder,
float32, sized for a 2-core machine. `gpu`: the released shapes (text `basic`: 1024-d, 24 + 24
layers, 16 heads, FFN 8192, vocabulary 256,206; speech `english`), bfloat16 parameters and
compute on both sides. Weights are random (the released files cannot be downloaded here) with
LayerNorm and bias parameters moved off their init values, so that a peer that dropped or
swapped them fails its parity check. The tokenizer is the committed UDHR fixture's (3,206 ids);
at the released shape its ids are a subset of the vocabulary, which changes no timing.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np
from flax import nnx

from sonar_jax.config import SpeechModelConfig, TextModelConfig
from sonar_jax.tokenizer import EOS, NllbTokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_SPM = FIXTURES / "spm" / "udhr.spm.model"
SOURCE_LANG, TARGET_LANG = "eng_Latn", "fra_Latn"


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    dtype: str  # parameters and compute of both sides
    text: dict  # TextModelConfig sizes; vocab_size None = the fixture tokenizer's
    speech: dict  # SpeechModelConfig sizes
    encode_shapes: tuple[tuple[int, int], ...]  # rows x tokens
    corpus_repeat: int  # copies of the UDHR-derived corpus (254 sentences each)
    corpus_batch_size: int
    decode: tuple[tuple[int, int, int], ...]  # (sentences, new tokens, beam)
    speech_batch: tuple[int, float]  # utterances x seconds
    train_variant: str  # variant of the `text` recipe (sonar_jax/configs/text.py)
    train_batches: tuple[tuple[int, int], ...]  # rows x tokens per array
    repeats: int
    hbm_bytes_per_s: float | None  # the weight-read floor of a decode step (GPU only)
    peak_flops: float | None  # dense bf16 peak, for MFU (GPU only)


SUITES = {
    "cpu": Suite(
        name="cpu", dtype="float32",
        text=dict(model_dim=512, num_layers=6, num_heads=8, ffn_dim=2048, vocab_size=None),
        speech=dict(model_dim=256, num_layers=6, num_heads=4, ffn_dim=1024, pooler_layers=3,
                    pooler_heads=4, pooler_ffn_dim=1024, pooler_vocab_size=128),
        encode_shapes=((128, 64), (64, 128), (32, 256)), corpus_repeat=1, corpus_batch_size=32,
        decode=((32, 64, 1), (32, 64, 5), (128, 64, 1)), speech_batch=(8, 10.0),
        train_variant="tiny", train_batches=((16, 32),), repeats=5,
        hbm_bytes_per_s=None, peak_flops=None),
    "gpu": Suite(
        name="gpu", dtype="bfloat16",
        text=dict(model_dim=1024, num_layers=24, num_heads=16, ffn_dim=8192, vocab_size=256206),
        speech=dict(model_dim=1024, num_layers=24, num_heads=16, ffn_dim=4096, pooler_layers=3,
                    pooler_heads=16, pooler_ffn_dim=4096),
        encode_shapes=((128, 64), (64, 128), (32, 256), (512, 64)), corpus_repeat=8,
        corpus_batch_size=128,
        decode=((64, 64, 1), (64, 64, 5), (1024, 64, 1)), speech_batch=(16, 10.0),
        train_variant="basic", train_batches=((64, 64), (256, 64)), repeats=5,
        # H100 / H200: HBM3(e) ~3.35 / 4.8 TB/s; dense bf16 989 TFLOP/s (both).
        hbm_bytes_per_s=4.8e12, peak_flops=989e12),
}


def tokenizer() -> NllbTokenizer:
    return NllbTokenizer(FIXTURE_SPM)


def text_config(suite: Suite, part: str) -> TextModelConfig:
    sizes = dict(suite.text)
    if sizes["vocab_size"] is None:
        sizes["vocab_size"] = tokenizer().vocab_size
    return TextModelConfig(**sizes, max_seq_len=514 if part == "encoder" else 512,
                           dtype=suite.dtype, param_dtype=suite.dtype)


def speech_config(suite: Suite) -> SpeechModelConfig:
    return SpeechModelConfig(**suite.speech, dtype=suite.dtype, param_dtype=suite.dtype)


def perturbed(params: dict, rng: np.random.Generator) -> dict:
    """LayerNorm/BatchNorm parameters and statistics and Linear biases moved off their init
    values (scale 1 + 0.2·N, bias and mean 0.2·N, variance 1 + 0.2·|N|, Linear bias 0.02·N);
    everything else as initialised."""
    def noise(value, scale, positive=False):
        draw = rng.normal(size=value.shape) * scale
        return value + jax.numpy.asarray(np.abs(draw) if positive else draw, value.dtype)

    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and "norm" in str(key):
            out[key] = {leaf: noise(v, 0.2, positive=leaf == "var") for leaf, v in value.items()}
        elif isinstance(value, dict):
            out[key] = perturbed(value, rng)
        else:
            out[key] = noise(value, 0.02) if key == "bias" else value
    return out


def random_model(model_cls, cfg, seed: int):
    """A module of `cfg` with random weights (perturbed as above), in the config's dtype."""
    model = model_cls(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, perturbed(nnx.to_pure_dict(state),
                                              np.random.default_rng(seed + 100)))
    nnx.update(model, state)
    return model


def random_model_and_peer(model_cls, cfg, peer_cls, seed: int):
    """(our random model of `cfg`, the PyTorch peer `peer_cls(cfg, params)` with its weights),
    the peer on the GPU when torch sees one, in the config's dtype."""
    model = random_model(model_cls, cfg, seed)
    params = nnx.to_pure_dict(nnx.state(model))  # stacked, as the peers' loaders read them
    return model, peer_cls(cfg, params, device=torch_device(), dtype=cfg.dtype)


def synthetic_tokens(tok: NllbTokenizer, rows: int, length: int, seed: int) -> np.ndarray:
    """[rows, length] source-mode ids: the language tag, random pieces, EOS (no padding)."""
    first_lang = tok.lang_id(tok.langs[0])  # pieces are the ids 4 .. first_lang - 1
    ids = np.random.default_rng(seed).integers(4, first_lang, size=(rows, length))
    ids[:, 0], ids[:, -1] = tok.lang_id(SOURCE_LANG), EOS
    return ids.astype(np.int32)


def corpus_sentences(tok: NllbTokenizer, max_tokens: int, repeat: int = 1,
                     seed: int = 0) -> list[str]:
    """A few hundred sentences of varied length from the UDHR fixture (37 texts, 16 languages):
    each text cut at 20/40/60/80% of its characters and repeated 1-3 times, longer than the
    encoder's limit dropped, `repeat` copies, shuffled."""
    texts = [e["text"] for e in json.loads((FIXTURES / "spm" / "udhr_sentences.json").read_text())]
    variants = []
    for text in texts:
        variants += [text[: int(len(text) * frac)] for frac in (0.2, 0.4, 0.6, 0.8)]
        variants += [" ".join([text] * copies) for copies in (1, 2, 3)]
    variants = list(dict.fromkeys(variants))
    lengths = [len(t) for t in tok.encode_batch(variants, SOURCE_LANG)]
    kept = [v for v, n in zip(variants, lengths) if n <= max_tokens] * repeat
    order = np.random.default_rng(seed).permutation(len(kept))
    return [kept[i] for i in order]


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
