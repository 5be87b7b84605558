#!/usr/bin/env python3
"""Build the BLASER 2.0 and MuTox parity fixtures with the official reference implementation.

Runs ONLY in the reference environment (torch 2.8.0, fairseq2 0.5.2, sonar-space 0.5.0; see
tests/fixtures/heads/README.md). The project's tests read the files this script writes.

Small fixtures (committed, tests/fixtures/heads/), 64-d like the tiny text models::

    REFENV/bin/python tests/reference/make_head_fixtures.py --out tests/fixtures/heads

Released sizes (NOT committed; 1024-d, BLASER hidden 3072/1536, about 170 MB)::

    REFENV/bin/python tests/reference/make_head_fixtures.py --full --out SCRATCH/heads_full

Models come from the reference's hubs (`get_blaser_model_hub()`, `get_mutox_model_hub()`): the
released arch configs `basic_qe`, `basic_ref` and `mutox`, shrunk with `dataclasses.replace`,
built by `hub.create_new_model(cfg).eval()`, every Linear weight scaled by WEIGHT_GAIN, and
saved as the released files are (BLASER's model.pt and mutox.pt are bare state dicts; one file
of each family is also written as `{"model": state_dict}`, which sonar 0.5 unwraps). Every
file is read back through the reference loader (`hub.load_custom_model`) and checked
bit-identical. The small run also scores UDHR sentence pairs end to end: the tiny reference text
encoder (tests/fixtures/text/tiny_text_encoder.pt) embeds them through sonar's
`TextToEmbeddingModelPipeline`, and the heads score those embeddings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fairseq2
from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline
from sonar.models.blaser import get_blaser_model_hub
from sonar.models.mutox import get_mutox_model_hub
from sonar.models.sonar_text import get_sonar_text_encoder_hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_text_fixtures import arch_configs, card_langs, load_tokenizer, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMALL = {"embedding_dim": 64, "hidden_dims": [96, 48], "speech_dim": 32}
SEEDS = {"blaser_qe": 7001, "blaser_ref": 7002, "mutox": 7003, "mutox_speech": 7004,
         "inputs": 7100}
ROWS = 8
# Every Linear weight is multiplied by this after the default init, so the tanh / ReLU layers work
# outside their near-linear range: a wrong feature order or normalisation then moves the scores
# by far more than the parity tolerance.
WEIGHT_GAIN = 4.0

# (file stem, family, arch, saved wrapped in {"model": ...}?)
MODELS = [("blaser_qe", "blaser", "basic_qe", False),
          ("blaser_ref", "blaser", "basic_ref", True),
          ("mutox", "mutox", "mutox", False)]
SPEECH_MUTOX = ("mutox_speech", "mutox", "mutox", True)  # small run only: 32-d, as the tiny
                                                         # speech encoder fixture

# End-to-end text batch: (lang, text prefix) selectors into tests/fixtures/spm/udhr_sentences.json.
TEXT_SRC = [("eng_Latn", "All human beings"), ("eng_Latn", "Everyone is entitled"),
            ("eng_Latn", "All human beings")]
TEXT_MT = [("fra_Latn", "Tous les êtres"), ("fra_Latn", "Chacun peut"),
           ("fra_Latn", "Chacun peut")]  # the last pair is a mistranslation
TEXT_REF = [("fra_Latn", "Tous les êtres"), ("fra_Latn", "Chacun peut"),
            ("fra_Latn", "Tous les êtres")]


def hub_for(family: str):
    return get_blaser_model_hub() if family == "blaser" else get_mutox_model_hub()


def config_for(family: str, arch: str, dim: int, full: bool):
    cfg = hub_for(family).get_arch_config(arch)
    if family == "mutox":
        return dataclasses.replace(cfg, input_size=dim)
    if full:
        return cfg
    return dataclasses.replace(cfg, embedding_dim=dim, hidden_dims=list(SMALL["hidden_dims"]))


def build_and_save(stem: str, family: str, arch: str, wrapped: bool, dim: int, full: bool,
                   out: Path):
    cfg = config_for(family, arch, dim, full)
    torch.manual_seed(SEEDS[stem])
    model = hub_for(family).create_new_model(dataclasses.replace(cfg)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(WEIGHT_GAIN)
    state = model.state_dict()
    path = out / f"{stem}.pt"
    torch.save({"model": state} if wrapped else state, path)
    loaded = hub_for(family).load_custom_model(path, dataclasses.replace(cfg)).eval()
    again = loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    info = {"config": dataclasses.asdict(cfg), "file_layout": "{'model': state_dict}" if wrapped
            else "bare state_dict", "keys": {k: list(v.shape) for k, v in state.items()},
            "params": sum(v.numel() for v in state.values()), "bytes": path.stat().st_size,
            "seed": SEEDS[stem]}
    return model, info


def embeddings(rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """SONAR-like rows plus the edge cases normalisation must survive: a large row, a tiny row
    and an all-zero row (the reference's F.normalize keeps it zero)."""
    x = 0.05 * torch.randn(rows, dim, generator=gen)
    x[1] *= 20.0
    x[2] *= 1e-4
    x[3] = 0.0
    return x


@torch.inference_mode()
def blaser_outputs(model, src, mt, ref) -> dict:
    """Scores with the model's own norm_emb (True, as released) and with it switched off."""
    needs_ref = model.input_form == "COMET"
    out = {}
    for suffix, norm in (("", True), ("_no_norm", False)):
        model.norm_emb = norm
        out[f"scores{suffix}"] = model(src=src, mt=mt, ref=ref if needs_ref else None).numpy()
    model.norm_emb = True
    return out


@torch.inference_mode()
def mutox_outputs(model, inputs) -> dict:
    return {"logits": model(inputs).numpy(), "probs": model(inputs, output_prob=True).numpy()}


def model_outputs(models: dict, dim: int, gen: torch.Generator) -> dict:
    src, mt, ref = (embeddings(ROWS, dim, gen) for _ in range(3))
    io = {"src": src.numpy(), "mt": mt.numpy(), "ref": ref.numpy()}
    for stem, model in models.items():
        if stem.startswith("blaser"):
            parts = blaser_outputs(model, src, mt, ref)
        else:
            width = model.model_all[0][1].in_features
            inputs = 0.1 * torch.randn(ROWS, width, generator=gen)  # MuTox reads raw embeddings
            inputs[3] = 0.0
            io[f"{stem}_inputs"] = inputs.numpy()
            parts = mutox_outputs(model, inputs)
        io.update({f"{stem}_{key}": value for key, value in parts.items()})
    return io


def select(sentences: list[dict], selectors) -> list[dict]:
    return [next(s for s in sentences if s["lang"] == lang and s["text"].startswith(prefix))
            for lang, prefix in selectors]


@torch.inference_mode()
def text_outputs(models: dict) -> dict:
    """The heads on the reference pipeline's embeddings of UDHR sentence pairs."""
    spm = REPO / "tests/fixtures/spm/udhr.spm.model"
    tokenizer = load_tokenizer(spm, card_langs())
    enc_cfg, _ = arch_configs("tiny", tokenizer.vocab_info.size)
    encoder = get_sonar_text_encoder_hub().load_custom_model(
        REPO / "tests/fixtures/text/tiny_text_encoder.pt", enc_cfg).eval()
    pipeline = TextToEmbeddingModelPipeline(encoder, tokenizer)
    sentences = json.loads((spm.parent / "udhr_sentences.json").read_text(encoding="utf-8"))
    io, emb = {}, {}
    for part, selectors in (("src", TEXT_SRC), ("mt", TEXT_MT), ("ref", TEXT_REF)):
        batch = select(sentences, selectors)
        (lang,) = {s["lang"] for s in batch}
        io[f"{part}_texts"] = np.array([s["text"] for s in batch])
        io[f"{part}_lang"] = np.array(lang)
        emb[part] = pipeline.predict([s["text"] for s in batch], source_lang=lang)
        io[f"{part}_embeddings"] = emb[part].numpy()
    io["blaser_qe_scores"] = models["blaser_qe"](src=emb["src"], mt=emb["mt"]).numpy()
    io["blaser_ref_scores"] = models["blaser_ref"](src=emb["src"], mt=emb["mt"],
                                                   ref=emb["ref"]).numpy()
    io.update({f"mutox_src_{key}": value
               for key, value in mutox_outputs(models["mutox"], emb["src"]).items()})
    return io


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--full", action="store_true",
                    help="the released sizes (1024-d, BLASER hidden 3072/1536); not committed")
    args = ap.parse_args(argv)
    start = time.time()
    fairseq2.init_fairseq2()
    args.out.mkdir(parents=True, exist_ok=True)
    dim = 1024 if args.full else SMALL["embedding_dim"]
    specs = [(spec, dim) for spec in MODELS]
    if not args.full:
        specs.append((SPEECH_MUTOX, SMALL["speech_dim"]))
    models, report = {}, {"models": {}}
    for (stem, family, arch, wrapped), width in specs:
        models[stem], report["models"][stem] = build_and_save(stem, family, arch, wrapped, width,
                                                              args.full, args.out)
    io = model_outputs(models, dim, torch.Generator().manual_seed(SEEDS["inputs"]))
    np.savez_compressed(args.out / "heads_io.npz", **io)
    if not args.full:
        np.savez_compressed(args.out / "text_io.npz", **text_outputs(models))
    report["rows"], report["input_seed"] = ROWS, SEEDS["inputs"]
    report["weight_gain"], report["versions"] = WEIGHT_GAIN, versions()
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out} in {time.time() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
