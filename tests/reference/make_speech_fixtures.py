#!/usr/bin/env python3
"""Build the SONAR speech-encoder parity fixtures with the official reference implementation.

Runs ONLY in the reference environment (torch 2.8.0, fairseq2 0.5.2, sonar-space 0.5.0; see
tests/fixtures/speech/README.md). Nothing here is imported by the project's tests.

Small fixtures (committed)::

    REFENV/bin/python tests/reference/make_speech_fixtures.py --out tests/fixtures/speech

Full-size random-init model in the fairseq(1) `spenc.*.pt` layout (NOT committed; ~7 GB), for
measuring the converter's peak memory::

    REFENV/bin/python tests/reference/make_speech_fixtures.py --arch english --out SCRATCH

Everything is built with the reference's own code: ``get_sonar_speech_encoder_hub()``,
``hub.get_arch_config(...)`` shrunk with ``dataclasses.replace``, ``hub.create_new_model(cfg)``;
LayerNorms, BatchNorm affine parameters and running statistics, and the relative-attention u/v
biases are then moved off their initial values. The fairseq(1) names are made by inverting
sonar's own ``_convert_sonar_speech_checkpoint`` key map (read from its source), and the written
file is loaded back through ``hub.load_custom_model`` (which runs that converter).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fairseq2
from fairseq2.models.transformer.sdpa.relative import RelativePositionalEncoding
from fairseq2.models.utils.checkpoint import convert_state_dict
from fairseq2.nn import BatchLayout
from fairseq2.nn import LayerNorm as Fs2LayerNorm
from sonar.models.sonar_speech import checkpoint as sonar_speech_checkpoint
from sonar.models.sonar_speech import get_sonar_speech_encoder_hub

# name: (model_dim, conformer layers, heads, ffn, pooler layers, pooler heads, pooler ffn)
ARCHS = {"tiny": (32, 2, 4, 64, 2, 4, 64)}
SEED = 5001
FULL_SEED = 5101
FBANK_LENGTHS = [133, 90, 57, 8]  # fbank frames; odd ones drop a frame when stacked
REL_POS_DIM, REL_POS_MAX = 1024, 4096  # the released table, checked at a few rows
REL_POS_ROWS = [4095, 4094, 3000, 1000, 100, 1, 0, -1, -100, -4095]  # relative positions
PERTURB_STD = 0.2


class FairseqConfigStandIn:
    """A custom class in the checkpoint, as released fairseq files hold config objects."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def arch_config(hub, arch: str):
    if arch in ("english", "non_english"):
        return hub.get_arch_config(arch)
    dim, layers, heads, ffn, p_layers, p_heads, p_ffn = ARCHS[arch]
    cfg = hub.get_arch_config("english")
    w2v2 = dataclasses.replace(cfg.w2v2_encoder_config, model_dim=dim, num_encoder_layers=layers,
                               num_encoder_attn_heads=heads, ffn_inner_dim=ffn)
    return dataclasses.replace(cfg, w2v2_encoder_config=w2v2, model_dim=dim,
                               num_decoder_layers=p_layers, num_decoder_attn_heads=p_heads,
                               ffn_inner_dim=p_ffn)


def perturb(model: torch.nn.Module, seed: int) -> dict:
    """Moves every norm and the u/v biases off their init values (a swapped mapping must show)."""
    gen = torch.Generator().manual_seed(seed)
    counts = {"layer_norm": 0, "batch_norm": 0, "uv_bias": 0}

    def noise(t):
        return PERTURB_STD * torch.randn(t.shape, generator=gen)

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (Fs2LayerNorm, torch.nn.LayerNorm)):
                m.weight.copy_(1.0 + noise(m.weight))
                m.bias.copy_(noise(m.bias))
                counts["layer_norm"] += 1
            elif isinstance(m, torch.nn.BatchNorm1d):
                m.weight.copy_(1.0 + noise(m.weight))
                m.bias.copy_(noise(m.bias))
                m.running_mean.copy_(noise(m.running_mean))
                m.running_var.copy_(torch.exp(noise(m.running_var)))
                m.num_batches_tracked.fill_(1000)
                counts["batch_norm"] += 1
            elif name.endswith("sdpa") and hasattr(m, "u_bias"):
                m.u_bias.add_(noise(m.u_bias))
                m.v_bias.add_(noise(m.v_bias))
                counts["uv_bias"] += 1
    return counts


def sonar_key_map() -> dict[str, str]:
    """sonar's fairseq(1) -> fairseq2 speech key map, read from its converter's source.

    The literal `key_map = {...}` plus the `key_map.update({...})` the converter applies for
    Conformer encoders (the model-level LayerNorm), in the order the converter tries them.
    """
    tree = ast.parse(inspect.getsource(sonar_speech_checkpoint._convert_sonar_speech_checkpoint))
    key_map: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "key_map"
                                                for t in node.targets):
            key_map.update(ast.literal_eval(node.value))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "update"
                and getattr(node.func.value, "id", None) == "key_map"):
            key_map.update(ast.literal_eval(node.args[0]))
    assert len(key_map) > 20, key_map
    return key_map


def to_fairseq1_name(fs2_key: str, key_map: dict[str, str]) -> str:
    """The fairseq(1) key that the reference's map turns into `fs2_key` (checked both ways)."""
    for pattern, replacement in key_map.items():
        groups = re.findall(r"\((?:[^()]*)\)", pattern)
        inverse = "^" + re.escape(replacement)
        for n, group in enumerate(groups, 1):
            inverse = inverse.replace(re.escape(f"\\{n}"), group)
        match = re.match(inverse, fs2_key)
        if not match:
            continue
        source = pattern.lstrip("^")
        for n, group in enumerate(groups, 1):
            source = source.replace(group, match.group(n), 1)
        candidate = source.replace("\\.", ".") + fs2_key[match.end():]
        if convert_state_dict({candidate: None}, key_map) == {fs2_key: None}:
            return candidate
    raise KeyError(f"no fairseq(1) name maps to {fs2_key}")


def fairseq1_checkpoint(model: torch.nn.Module, cfg, key_map: dict[str, str], moments: int,
                        max_params: int | None = None) -> dict:
    """A spenc-like file: fairseq(1)-named weights plus the non-weight objects such files carry
    (entries the reference drops, a config object of a custom class, optimizer state).

    moments: optimizer tensors stored per parameter (Adam: 2), for the first `max_params`
    parameters (all by default; the committed fixture keeps a few to stay small).
    """
    sd = model.state_dict()
    named = {to_fairseq1_name(k, key_map): v for k, v in sd.items()}
    dim = cfg.model_dim
    gen = torch.Generator().manual_seed(7)
    named["encoder.w2v_model.mask_emb"] = torch.rand(dim, generator=gen)
    named["encoder.w2v_model.encoder.pos_conv.0.bias"] = torch.rand(dim, generator=gen)
    named["encoder.w2v_model.encoder.pos_conv.0.weight_g"] = torch.rand(1, 1, 3, generator=gen)
    named["encoder.w2v_model.encoder.pos_conv.0.weight_v"] = torch.rand(dim, 4, 3, generator=gen)
    named["decoder.version"] = torch.tensor([3.0])
    named["decoder.embed_positions._float_tensor"] = torch.tensor([1.0])
    state = {}
    params = [v for k, v in sd.items() if v.is_floating_point()]
    for i, p in enumerate(params[:max_params]):
        state[i] = {"step": torch.tensor(1000.0)}
        for name in ("exp_avg", "exp_avg_sq")[:moments]:
            state[i][name] = torch.zeros_like(p).uniform_(generator=gen)
    return {
        "model": named,
        "cfg": FairseqConfigStandIn(model={"_name": "sonar_speech", "encoder_embed_dim": dim},
                                    task={"_name": "speech_to_text"}, optimization={"lr": [1e-4]}),
        "args": None,
        "optimizer_history": [{"criterion_name": "MSE", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": 0.5}, "num_updates": 1000}],
        "last_optimizer_state": {"state": state, "param_groups": [{"lr": 1e-4, "params":
                                                                  list(range(len(params)))}]},
        "extra_state": {"epoch": 3, "train_iterator": {"epoch": 3, "iterations_in_epoch": 17}},
    }


def fbank_batch(seed: int, dim_channels: int = 80):
    """Random fbank-like (standardised) features, right-padded with zeros as the reference's
    collater pads."""
    gen = np.random.default_rng(seed)
    width = max(FBANK_LENGTHS)
    fbank = np.zeros((len(FBANK_LENGTHS), width, dim_channels), np.float32)
    for row, length in enumerate(FBANK_LENGTHS):
        fbank[row, :length] = gen.standard_normal((length, dim_channels), dtype=np.float32)
    return fbank, np.array(FBANK_LENGTHS, np.int64)


def forward(model, fbank: np.ndarray, lengths: np.ndarray):
    with torch.inference_mode():
        x = torch.from_numpy(fbank)
        out = model(x, BatchLayout(tuple(x.shape[:2]), seq_lens=lengths.tolist()))
        return out.sentence_embeddings.numpy(), out.encoded_seqs.numpy(), \
            np.array(out.encoded_seqs_layout.seq_lens, np.int64)


def check_reference_load(hub, path: Path, cfg, model) -> None:
    """The written file must load through the reference's own loader to the same weights."""
    loaded = hub.load_custom_model(path, cfg, restrict=False, progress=False)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys(), sorted(set(want) ^ set(got))[:10]
    for key in want:
        assert torch.equal(want[key], got[key]), key


def relative_position_rows() -> np.ndarray:
    """Rows of the released-size relative-position table (relative positions REL_POS_ROWS)."""
    table = RelativePositionalEncoding(REL_POS_DIM, REL_POS_MAX).freqs
    return table[[REL_POS_MAX - 1 - p for p in REL_POS_ROWS]].numpy()


def make_small(out: Path) -> dict:
    hub = get_sonar_speech_encoder_hub()
    key_map = sonar_key_map()
    report = {}
    for arch in ARCHS:
        cfg = arch_config(hub, arch)
        torch.manual_seed(SEED)
        model = hub.create_new_model(cfg).eval()
        counts = perturb(model, SEED + 100000)
        fs2_path = out / f"{arch}_speech_encoder.pt"
        torch.save({"model": model.state_dict()}, fs2_path)
        check_reference_load(hub, fs2_path, cfg, model)
        fs1_path = out / f"{arch}_speech_encoder_fairseq.pt"
        torch.save(fairseq1_checkpoint(model, cfg, key_map, moments=2, max_params=4), fs1_path)
        check_reference_load(hub, fs1_path, cfg, model)

        fbank, lengths = fbank_batch(SEED)
        emb, seqs, seq_lens = forward(model, fbank, lengths)
        singles = [forward(model, fbank[i:i + 1, :n], lengths[i:i + 1])[0][0]
                   for i, n in enumerate(lengths)]
        np.savez(out / f"{arch}_speech_encoder_io.npz", fbank=fbank, fbank_lens=lengths,
                 sentence_embeddings=emb, encoded_seqs=seqs, seq_lens=seq_lens,
                 single_embeddings=np.stack(singles),
                 rel_pos_positions=np.array(REL_POS_ROWS, np.int64),
                 rel_pos_rows=relative_position_rows())
        report[arch] = {
            "seed": SEED, "perturbed": counts,
            "parameters": sum(p.numel() for p in model.parameters()),
            "state_dict_entries": len(model.state_dict()),
            "fairseq1_entries": len(fairseq1_checkpoint(model, cfg, key_map, 0)["model"]),
            "padded_vs_single_max_abs": float(np.abs(np.stack(singles) - emb).max()),
            "bytes": {p.name: p.stat().st_size for p in (fs2_path, fs1_path)},
        }
    return report


def make_full(arch: str, out: Path) -> dict:
    hub = get_sonar_speech_encoder_hub()
    cfg = arch_config(hub, arch)
    torch.manual_seed(FULL_SEED)
    model = hub.create_new_model(cfg).eval()
    perturb(model, FULL_SEED + 100000)
    path = out / f"spenc.{arch}.random.pt"
    start = time.time()
    torch.save(fairseq1_checkpoint(model, cfg, sonar_key_map(), moments=2), path)
    fbank, lengths = fbank_batch(FULL_SEED)
    emb, _, seq_lens = forward(model, fbank, lengths)
    np.savez(out / f"spenc.{arch}.random_io.npz", fbank=fbank, fbank_lens=lengths,
             sentence_embeddings=emb, seq_lens=seq_lens)
    return {"arch": arch, "seed": FULL_SEED, "file": path.name, "bytes": path.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "save_seconds": round(time.time() - start, 1)}


def versions() -> dict:
    import sonar

    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "fairseq2": fairseq2.__version__, "sonar": getattr(sonar, "__version__", "?"),
            "numpy": np.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", choices=["tiny", "english", "non_english"], default="tiny")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    fairseq2.init_fairseq2()
    if args.arch == "tiny":
        report = make_small(args.out)
    else:
        report = make_full(args.arch, args.out)
    report["versions"] = versions()
    (args.out / ("report.json" if args.arch == "tiny" else f"spenc.{args.arch}.report.json")
     ).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
