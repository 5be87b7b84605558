"""Text inference throughput: sonar_jax against HF transformers (PyTorch) on the same CPU.

One process, one device, the same inputs on both sides, after checking that both compute the same
functions (embeddings and teacher-forced logits within 1e-4, fp32). Measured:

- encoding on fixed shapes (synthetic ids, no padding): the jitted encoder vs `M2M100Encoder` +
  mean pooling;
- encoding a corpus of a few hundred UDHR-derived sentences of varied length, end to end:
  ours = `TextToEmbeddingModelPipeline.predict` (tokenization, length-sorted packing, shape
  buckets); peer = the same tokenizer, then the reference pipeline's batching (sorted by character
  length, fixed batch size, padded to each batch's longest) into HF. Padding waste is reported;
- decoding exactly `--new-tokens` tokens per sentence (EOS banned until the last, then forced) with
  greedy search and beam search: ours = `EmbeddingToTextModelPipeline.predict` (and the bare
  jitted `generate` with a cache of exactly prompt + new tokens); peer = `generate` with the
  embedding as a length-1 encoder output and the prompt [eos, lang].

Method: every workload runs once (timed separately: for ours it includes XLA compilation) and once
more as a warm-up, both excluded; then `--repeats` rounds in which the sides alternate, so a
disturbance hits both. Outputs are materialised (numpy) inside the timed region; torch runs under
`inference_mode`. Medians with min and max are reported, and the CPU time other processes used
during each workload (from /proc/stat), so a disturbed run can be recognised and repeated.

    python benchmarks/text_inference.py --make-random small          # random 512-d, 6-layer pair
    python benchmarks/text_inference.py --mid-fixture --out benchmarks/results/text_inference_cpu_mid.json
    python benchmarks/text_inference.py --encoder ENC_DIR --decoder DEC_DIR [--out FILE.json]

Needs torch and transformers next to sonar_jax (never installed with it), e.g.:

    python -m venv --system-site-packages BENCHVENV && BENCHVENV/bin/pip install torch transformers
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import sonar_jax
from sonar_jax import batching, checkpoint
from sonar_jax.config import TextModelConfig, text_arch
from sonar_jax.generate import PROMPT_LEN, GenerationConfig, generate
from sonar_jax.model_dir import write_model_dir
from sonar_jax.models.text_decoder import TextDecoder
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.pipelines import EmbeddingToTextModelPipeline, TextToEmbeddingModelPipeline
from sonar_jax.tokenizer import EOS, NllbTokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_SPM = FIXTURES / "spm" / "udhr.spm.model"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "text_inference_cpu.json"

# Benchmark-sized architectures for --make-random (vocabulary: the fixture tokenizer's 3,206 ids).
ARCHS = {"small": dict(model_dim=512, num_layers=6, num_heads=8, ffn_dim=2048)}
SOURCE_LANG, TARGET_LANG = "eng_Latn", "fra_Latn"
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------
# Models


def perturbed(params: dict, rng: np.random.Generator, path: tuple[str, ...] = ()) -> dict:
    """Random-init parameters with LayerNorm scales/biases and Linear biases moved off their
    init values (1 and 0), so that a peer that swapped or dropped them fails the parity check."""
    out = {}
    for key, value in params.items():
        here = path + (key,)
        if isinstance(value, dict):
            out[key] = perturbed(value, rng, here)
            continue
        value = np.asarray(value, np.float32)
        if any("layer_norm" in p for p in here):
            noise = rng.standard_normal(value.shape).astype(np.float32) * 0.2
            value = value + noise  # scale 1 + 0.2·N, bias 0.2·N
        elif key == "bias":
            value = value + rng.standard_normal(value.shape).astype(np.float32) * 0.02
        out[key] = value
    return out


def make_random_dirs(out: pathlib.Path, arch: str, seed: int) -> tuple[pathlib.Path, pathlib.Path]:
    """Random-init encoder and decoder of `arch`, written as converted directories under `out`."""
    tokenizer = NllbTokenizer(FIXTURE_SPM)
    config = text_arch(vocab_size=tokenizer.vocab_size, **ARCHS[arch])
    dirs = []
    for index, (kind, model_cls) in enumerate([("text_encoder", TextEncoder),
                                                ("text_decoder", TextDecoder)]):
        cfg = TextModelConfig.from_dict(dict(config[kind.removeprefix("text_")]))
        model = model_cls(cfg, rngs=nnx.Rngs(seed + index))
        params = checkpoint.to_numpy(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        params = perturbed(params, np.random.default_rng(seed + 100 + index))
        dirs.append(write_model_dir(out / kind, kind, cfg, params, tokenizer))
    return dirs[0], dirs[1]


def convert_mid_fixture(out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The committed mid-size reference models (made by the official SONAR), converted."""
    from sonar_jax.convert import convert_checkpoint

    return tuple(convert_checkpoint(FIXTURES / "text" / f"mid_text_{part}.pt", out / part,
                                    f"text_{part}", tokenizer=FIXTURE_SPM, num_heads=8)
                 for part in ("encoder", "decoder"))


# ---------------------------------------------------------------------------------------------
# Inputs


def corpus_sentences(tokenizer: NllbTokenizer, max_tokens: int, seed: int = 0) -> list[str]:
    """A few hundred sentences of varied length from the UDHR fixture (37 texts, 16 languages):
    each text cut at 20/40/60/80% of its characters and repeated 1-3 times, in shuffled order.
    Variants longer than the encoder's limit are dropped (no truncation on either side)."""
    texts = [e["text"] for e in json.loads((FIXTURES / "spm" / "udhr_sentences.json").read_text())]
    variants = []
    for text in texts:
        variants += [text[: int(len(text) * frac)] for frac in (0.2, 0.4, 0.6, 0.8)]
        variants += [" ".join([text] * repeat) for repeat in (1, 2, 3)]
    variants = list(dict.fromkeys(variants))  # drop duplicates, keep order
    lengths = [len(t) for t in tokenizer.encode_batch(variants, SOURCE_LANG)]
    kept = [v for v, n in zip(variants, lengths) if n <= max_tokens]
    order = np.random.default_rng(seed).permutation(len(kept))
    return [kept[i] for i in order]


def synthetic_tokens(tokenizer: NllbTokenizer, rows: int, length: int, seed: int) -> np.ndarray:
    """[rows, length] source-mode ids: the language tag, random pieces, EOS (no padding)."""
    first_lang = tokenizer.lang_id(tokenizer.langs[0])  # pieces are the ids 4 .. first_lang - 1
    ids = np.random.default_rng(seed).integers(4, first_lang, size=(rows, length))
    ids[:, 0], ids[:, -1] = tokenizer.lang_id(SOURCE_LANG), EOS
    return ids.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Timing


class CpuShare:
    """Share of the machine's CPU time that other processes used while the block ran.

    /proc/stat counts busy time of all processes; our own comes from getrusage. A share well above
    zero means a neighbour competed for the cores and the timings of that block are suspect.
    """

    def __enter__(self):
        self._busy, self._ours, self._wall = _busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        others = (_busy_seconds() - self._busy) - (_own_cpu_seconds() - self._ours)
        self.value = max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


def wait_until_idle(max_wait_s: float, threshold: float = 0.05, window_s: float = 5.0) -> float:
    """Waits (at most `max_wait_s`) until other processes use under `threshold` of the CPU over a
    `window_s` window, so that a shared machine's neighbours do not land in the timings.
    Returns the share of the last window."""
    deadline = time.monotonic() + max_wait_s
    while True:
        with CpuShare() as share:
            time.sleep(window_s)
        if share.value < threshold or time.monotonic() >= deadline:
            return share.value
        log(f"other processes use {share.value:.0%} of the CPU; waiting")


def _busy_seconds() -> float:
    try:
        fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CompileClock:
    """Seconds JAX spent tracing, lowering and compiling (from jax.monitoring events), so the
    compile time of a workload's first call can be reported apart from its run time."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        self.total = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        if event in self.EVENTS:
            self.total += duration


COMPILE_CLOCK = CompileClock()
WAIT_FOR_IDLE_S = 0.0  # set from --wait-for-idle


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _first_call(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, JAX compile seconds) of a call."""
    compiled_before = COMPILE_CLOCK.total
    return _seconds(fn), COMPILE_CLOCK.total - compiled_before


def compare(sides: dict[str, Callable[[], object]], repeats: int) -> dict:
    """Times each side: a first call (its JAX compile time recorded) and a warm-up call, both
    excluded; then `repeats` rounds with the sides alternating. Each callable must return only
    once its result is on the host."""
    wait_until_idle(WAIT_FOR_IDLE_S)
    first = {name: _first_call(fn) for name, fn in sides.items()}
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    with CpuShare() as share:
        for _ in range(repeats):
            for name, fn in sides.items():
                times[name].append(_seconds(fn))
    return {"other_processes_cpu_share": round(share.value, 3),
            **{name: summary(times[name], *first[name]) for name in sides}}


def summary(times: Sequence[float], first: float, compile_s: float) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": [round(t, 5) for t in times], "first_call_s": first,
            "jax_compile_s": compile_s}


def add_rates(result: dict, sides: Sequence[str], units: dict[str, float]) -> None:
    """Adds `<unit>_per_s` (from the median, with the range from min/max) to each side, and the
    ours/peer ratio of every rate (> 1: ours is faster)."""
    for side in sides:
        for unit, amount in units.items():
            result[side][f"{unit}_per_s"] = amount / result[side]["median_s"]
            result[side][f"{unit}_per_s_range"] = [amount / result[side]["max_s"],
                                                  amount / result[side]["min_s"]]
    for side in sides:
        if side != "peer":
            result[f"{side}_over_peer"] = result["peer"]["median_s"] / result[side]["median_s"]


# ---------------------------------------------------------------------------------------------
# Workloads


def bench_encode_fixed(t2e: TextToEmbeddingModelPipeline, peer, shapes, repeats, seed) -> list:
    """Fixed [rows, length] batches: the jitted encoder (as the pipeline jits it) vs HF."""
    import torch

    from hf_peer import to_hf_ids

    graphdef, state = nnx.split(t2e.model)
    encode = jax.jit(lambda s, ids, lens: nnx.merge(graphdef, s)(ids, lens).sentence_embeddings)
    results = []
    for rows, length in shapes:
        ids = synthetic_tokens(t2e.tokenizer, rows, length, seed)
        ids_j, lens_j = jnp.asarray(ids), jnp.full((rows,), length, jnp.int32)
        ids_t = torch.from_numpy(to_hf_ids(ids.astype(np.int64)))
        mask_t = torch.ones_like(ids_t)

        def ours():
            return np.asarray(encode(state, ids_j, lens_j))

        def hf():
            with torch.inference_mode():
                return peer.embed_hf(ids_t, mask_t).numpy()

        result = {"rows": rows, "length": length, **compare({"ours": ours, "peer": hf}, repeats)}
        add_rates(result, ["ours", "peer"], {"sentences": rows, "tokens": rows * length})
        results.append(result)
        log(f"encode {rows}x{length}: ours {result['ours']['sentences_per_s']:.1f} sent/s, "
            f"HF {result['peer']['sentences_per_s']:.1f} sent/s")
    return results


def peer_batches(sentences: Sequence[str], batch_size: int) -> list[list[int]]:
    """The reference pipeline's batching: indices sorted by character length, fixed-size chunks."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def peer_embed_corpus(t2e: TextToEmbeddingModelPipeline, peer, sentences: Sequence[str],
                      batch_size: int) -> np.ndarray:
    """HF end to end, with our tokenizer (same cost as ours) and the reference's batching."""
    tokens = t2e.tokenize(sentences, SOURCE_LANG)
    out = np.zeros((len(sentences), t2e.model.cfg.model_dim), np.float32)
    for batch in peer_batches(sentences, batch_size):
        out[batch] = peer.embed([tokens[i] for i in batch])
    return out


def padding_stats(t2e: TextToEmbeddingModelPipeline, sentences: Sequence[str],
                  batch_size: int) -> dict:
    """Positions each side computes (padded rows × width) relative to the real tokens."""
    lengths = np.array([len(t) for t in t2e.tokenize(sentences, SOURCE_LANG)])
    real = int(lengths.sum())
    ours = 0
    for batch in batching.pack_by_length(lengths, batch_size=batch_size, max_tokens=None):
        rows = batching.rows_bucket(len(batch.indices), t2e.parallel.size)
        ours += rows * batching.length_bucket(int(batch.lengths.max()), t2e.max_seq_len)
    peer = sum(len(b) * int(lengths[b].max()) for b in peer_batches(sentences, batch_size))
    return {"real_tokens": real, "ours_computed_tokens": ours, "peer_computed_tokens": peer,
            "ours_padded_over_real": ours / real, "peer_padded_over_real": peer / real,
            "ours_padding_waste": (ours - real) / real, "peer_padding_waste": (peer - real) / real}


def bench_encode_corpus(t2e, peer, sentences, batch_size, repeats) -> dict:
    def ours():
        return t2e.predict(sentences, SOURCE_LANG, batch_size=batch_size)

    def hf():
        import torch

        with torch.inference_mode():
            return peer_embed_corpus(t2e, peer, sentences, batch_size)

    lengths = [len(t) for t in t2e.tokenize(sentences, SOURCE_LANG)]
    result = {"sentences": len(sentences), "batch_size": batch_size,
              "tokens_min_median_max": [min(lengths), int(np.median(lengths)), max(lengths)],
              "padding": padding_stats(t2e, sentences, batch_size),
              **compare({"ours": ours, "peer": hf}, repeats)}
    add_rates(result, ["ours", "peer"], {"sentences": len(sentences), "tokens": sum(lengths)})
    log(f"encode corpus: ours {result['ours']['sentences_per_s']:.1f} sent/s, "
        f"HF {result['peer']['sentences_per_s']:.1f} sent/s")
    return result


def bench_decode(e2t: EmbeddingToTextModelPipeline, peer, embeddings: np.ndarray, beam: int,
                 new_tokens: int, repeats: int) -> dict:
    """Exactly `new_tokens` generated tokens per sentence on every side (EOS forced last)."""
    num = len(embeddings)
    total = PROMPT_LEN + new_tokens
    lang = e2t.tokenizer.lang_id(TARGET_LANG)
    hf_config = peer.generation_config(beam_size=beam, new_tokens=new_tokens)
    core_config = GenerationConfig(capacity=total, beam_size=beam, min_gen_len=new_tokens)
    emb_j, langs_j = jnp.asarray(embeddings), jnp.full((num,), lang, jnp.int32)

    def ours():
        return e2t.predict(embeddings, TARGET_LANG, batch_size=num, beam_size=beam,
                           max_seq_len=total, min_gen_len=new_tokens)

    def ours_core():
        out = generate(e2t.model, emb_j, langs_j, core_config)
        return np.asarray(out.tokens), np.asarray(out.lengths)

    def hf():
        ids = peer.generate(embeddings, lang, hf_config)
        return [e2t.tokenizer.decode(row[PROMPT_LEN:]) for row in ids]

    sides = {"ours": ours, "ours_core": ours_core, "peer": hf}
    timings = compare(sides, repeats)
    agreement = generation_agreement(ours_core()[0], peer.generate(embeddings, lang, hf_config),
                                     ours(), hf())
    result = {"sentences": num, "beam_size": beam, "new_tokens": new_tokens,
              "ours_cache_positions": batching.length_bucket(total, e2t.model.cfg.max_seq_len),
              "ours_core_cache_positions": total, "agreement": agreement, **timings}
    add_rates(result, list(sides), {"sentences": num, "tokens": num * new_tokens})
    log(f"decode beam {beam}: ours {result['ours']['tokens_per_s']:.0f} tok/s "
        f"(core {result['ours_core']['tokens_per_s']:.0f}), HF {result['peer']['tokens_per_s']:.0f}"
        f" tok/s; identical sequences {agreement['identical_sequences']}")
    return result


def generation_agreement(ours_tokens: np.ndarray, hf_ids: np.ndarray, ours_texts, hf_texts
                         ) -> dict:
    """How often both sides generated the same ids (a check that the setups match; random
    models have near-ties, so a late divergence is possible without a bug)."""
    hf_tokens = hf_ids[:, PROMPT_LEN:]
    same = hf_tokens == ours_tokens[:, : hf_tokens.shape[1]]
    first_diff = [int(np.argmin(row)) if not row.all() else None for row in same]
    return {"identical_sequences": f"{int(same.all(axis=1).sum())}/{len(same)}",
            "identical_token_fraction": float(same.mean()),
            "first_divergence_positions": [p for p in first_diff if p is not None],
            "identical_texts": f"{sum(a == b for a, b in zip(ours_texts, hf_texts))}/{len(hf_texts)}"}


# ---------------------------------------------------------------------------------------------
# Parity


def padded(tokens: Sequence[Sequence[int]], pad_idx: int) -> np.ndarray:
    """Id lists -> [N, longest] int32, right-padded."""
    out = np.full((len(tokens), max(map(len, tokens))), pad_idx, np.int32)
    for row, seq in enumerate(tokens):
        out[row, :len(seq)] = seq
    return out


def check_parity(t2e, e2t, enc_peer, dec_peer, sentences: Sequence[str]) -> dict:
    """HF must compute our functions: embeddings and teacher-forced logits within TOLERANCE."""
    sample = sorted(sentences, key=len)[:: max(1, len(sentences) // 16)]  # short to long
    # The modules are called directly (not the pipelines' jitted functions), so that the
    # benchmark's first calls still include their compilation.
    source = t2e.tokenize(sample, SOURCE_LANG)
    ours_emb = np.asarray(t2e.model(jnp.asarray(padded(source, t2e.tokenizer.pad_idx)))
                          .sentence_embeddings)
    hf_emb = enc_peer.embed(source)
    enc_err = float(np.abs(ours_emb - hf_emb).max())

    limit = e2t.model.cfg.max_seq_len
    targets = [t[:limit] for t in e2t.tokenizer.encode_batch(sample[:8], TARGET_LANG, "target")]
    tokens = padded(targets, e2t.tokenizer.pad_idx)
    width = tokens.shape[1]
    embeddings = ours_emb[: len(targets)]
    ours_logits = np.asarray(e2t.model(jnp.asarray(embeddings), jnp.asarray(tokens)))
    hf_logits = dec_peer.logits(embeddings, tokens)
    real = np.arange(width)[None, :] < np.array([len(t) for t in targets])[:, None]
    dec_err = float(np.abs(ours_logits - hf_logits)[real].max())
    report = {"encoder_embeddings_max_abs_err": enc_err,
              "encoder_embeddings_max_abs": float(np.abs(ours_emb).max()),
              "decoder_logits_max_abs_err": dec_err,
              "decoder_logits_max_abs": float(np.abs(ours_logits[real]).max()),
              "sentences": len(sample), "decoder_sequences": len(targets),
              "token_lengths": [len(t) for t in t2e.tokenize(sample, SOURCE_LANG)],
              "tolerance": TOLERANCE}
    log(f"parity: embeddings max |err| {enc_err:.2e}, logits max |err| {dec_err:.2e}")
    if max(enc_err, dec_err) > TOLERANCE:
        raise SystemExit(f"HF peer differs from sonar_jax beyond {TOLERANCE}: {report}")
    return report


# ---------------------------------------------------------------------------------------------
# Record


def environment(torch_info: dict) -> dict:
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": getattr(jax.lib, "__version__", None) or _version("jaxlib"),
            "flax": _version("flax"), "sonar_jax": getattr(sonar_jax, "__version__", None),
            "jax_devices": [str(d) for d in jax.devices()],
            "xla_flags": os.environ.get("XLA_FLAGS", ""), **torch_info}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _version(package: str) -> str | None:
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(package)
    return None


def command_line(argv: Sequence[str]) -> str:
    """The command as run, with directory arguments reduced to their names (no machine paths)."""
    words = [pathlib.Path(a).name if os.path.isabs(a) else a for a in argv]
    return " ".join(["python", "benchmarks/text_inference.py", *words])


def markdown_table(record: dict) -> str:
    """The README table: one row per workload, median rates and ours/peer."""
    rows = ["| workload | unit | sonar_jax (median [min–max]) | HF transformers | ours / HF |",
            "|---|---|---|---|---|"]

    def cell(side: dict, unit: str) -> str:
        low, high = side[f"{unit}_per_s_range"]
        return f"{side[f'{unit}_per_s']:,.1f} [{low:,.1f}–{high:,.1f}]"

    for r in record["encode_fixed"]:
        rows.append(f"| encode {r['rows']}×{r['length']} tokens | sentences/s | "
                    f"{cell(r['ours'], 'sentences')} | {cell(r['peer'], 'sentences')} | "
                    f"{r['ours_over_peer']:.2f} |")
    c = record["encode_corpus"]
    p = c["padding"]
    rows.append(f"| encode corpus ({c['sentences']} sentences, batch {c['batch_size']}; computed/real"
                f" tokens {p['ours_padded_over_real']:.2f} vs {p['peer_padded_over_real']:.2f}) | "
                f"sentences/s | {cell(c['ours'], 'sentences')} | {cell(c['peer'], 'sentences')} | "
                f"{c['ours_over_peer']:.2f} |")
    for d in record["decode"]:
        name = "greedy" if d["beam_size"] == 1 else f"beam {d['beam_size']}"
        rows.append(f"| decode {name}, {d['sentences']} × {d['new_tokens']} tokens | tokens/s | "
                    f"{cell(d['ours'], 'tokens')} | {cell(d['peer'], 'tokens')} | "
                    f"{d['ours_over_peer']:.2f} |")
        rows.append(f"| … bare `generate`, cache {d['ours_core_cache_positions']} | tokens/s | "
                    f"{cell(d['ours_core'], 'tokens')} | | {d['ours_core_over_peer']:.2f} |")
    return "\n".join(rows)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Main


def parse_shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--make-random", choices=sorted(ARCHS),
                        help="build random-init converted models of this architecture")
    models.add_argument("--mid-fixture", action="store_true",
                        help="convert the committed mid-size reference models")
    models.add_argument("--encoder", type=pathlib.Path, help="converted encoder directory")
    parser.add_argument("--decoder", type=pathlib.Path, help="converted decoder directory")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes("128x64,64x128,32x256"),
                        help="fixed encoder shapes, rows x length")
    parser.add_argument("--corpus-batch-size", type=int, default=32)
    parser.add_argument("--decode-sentences", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beams", type=lambda s: [int(v) for v in s.split(",")], default=[1, 5])
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                        help="HF attention implementation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-for-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each workload, wait up to this long for other processes "
                             "to leave the CPU idle")
    parser.add_argument("--check-only", action="store_true", help="stop after the parity check")
    args = parser.parse_args(argv)
    if args.encoder is not None and args.decoder is None:
        parser.error("--encoder needs --decoder")
    return args


def model_dirs(args, scratch: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, str]:
    if args.make_random:
        enc, dec = make_random_dirs(scratch, args.make_random, args.seed)
        return enc, dec, f"random init, architecture '{args.make_random}' {ARCHS[args.make_random]}"
    if args.mid_fixture:
        enc, dec = convert_mid_fixture(scratch)
        return enc, dec, "committed mid fixture (tests/fixtures/text/mid_text_*.pt)"
    return args.encoder, args.decoder, f"{args.encoder.name} + {args.decoder.name}"


def run(args, enc_dir, dec_dir, models: str) -> dict:
    try:
        import torch

        import hf_peer
    except ImportError as error:
        raise SystemExit(f"{error}: this benchmark needs torch and transformers, which sonar_jax "
                         "never installs; see the module docstring") from None
    torch.set_num_threads(args.torch_threads)
    t2e = TextToEmbeddingModelPipeline(enc_dir)
    e2t = EmbeddingToTextModelPipeline(dec_dir, t2e.tokenizer)
    enc_peer = hf_peer.HFEncoder(enc_dir, args.attn)
    dec_peer = hf_peer.HFDecoder(dec_dir, args.attn)
    sentences = corpus_sentences(t2e.tokenizer, t2e.max_seq_len, args.seed)
    record = {"models": models, "encoder_config": t2e.model.cfg.to_dict(),
              "decoder_config": e2t.model.cfg.to_dict(),
              "command": command_line(sys.argv[1:]),
              "environment": environment(hf_peer.torch_info()),
              "hf_attn_implementation": args.attn, "repeats": args.repeats,
              "wait_for_idle_s": args.wait_for_idle,
              "method": "per workload: a first call (wall time and JAX compile time recorded) "
                        "and one warm-up call are excluded; then `repeats` rounds with the sides "
                        "alternating; outputs materialised as numpy; torch.inference_mode; fp32; "
                        "median [min, max]",
              "parity": check_parity(t2e, e2t, enc_peer, dec_peer, sentences)}
    if args.check_only:
        return record
    record["encode_fixed"] = bench_encode_fixed(t2e, enc_peer, args.shapes, args.repeats,
                                                args.seed)
    record["encode_corpus"] = bench_encode_corpus(t2e, enc_peer, sentences,
                                                  args.corpus_batch_size, args.repeats)
    embeddings = t2e.predict(sentences[: args.decode_sentences], SOURCE_LANG)
    record["decode"] = [bench_decode(e2t, dec_peer, embeddings, beam, args.new_tokens,
                                     args.repeats) for beam in args.beams]
    record["markdown_table"] = markdown_table(record)
    return record


def main(argv: Sequence[str] | None = None) -> None:
    global WAIT_FOR_IDLE_S
    args = parse_args(sys.argv[1:] if argv is None else argv)
    WAIT_FOR_IDLE_S = args.wait_for_idle
    with tempfile.TemporaryDirectory(prefix="sonar_jax_bench_") as scratch:
        enc_dir, dec_dir, models = model_dirs(args, pathlib.Path(scratch))
        record = run(args, enc_dir, dec_dir, models)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    if "markdown_table" in record:
        print(record["markdown_table"])
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
