"""The text multi-loss training step (MT + 0.1·MSE + 0.01·DAE, the `text` recipe) against
the same model and losses in PyTorch: HF `M2M100Encoder` / `M2M100Decoder` (output tied to the
decoder's table) filled with our initial parameters, AdamW (fused on CUDA) with the same
hyper-parameters and global-norm clipping; bf16 autocast over float32 weights on GPUs, float32
on CPUs; eager, and `torch.compile` where it runs.

Batches: random ids `[lang] pieces [eos]`, rows x length for each of source, target and noised
target. tokens/s counts rows x length per step (one array), as the H200 measurements did.
MFU = model FLOPs / step time / peak, with model FLOPs per step
    6·P_enc·(B·T)·3 + 6·P_dec·(B·T)·2 + 6·V·D·(B·T)·2,
P_enc = L·(4D² + 2DF), P_dec = L·(8D² + 2DF): three encoder passes (source, target, noised
target), two decoder passes (MT, DAE), the tied output projection both ways; attention scores
and the embedding lookups are not counted.
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks import harness, suites
from sonar_jax import sharding


def model_flops(enc, dec, rows: int, length: int) -> float:
    tokens = rows * length
    p_enc = enc.num_layers * (4 * enc.model_dim ** 2 + 2 * enc.model_dim * enc.ffn_dim)
    p_dec = dec.num_layers * (8 * dec.model_dim ** 2 + 2 * dec.model_dim * dec.ffn_dim)
    return (6 * p_enc * tokens * 3 + 6 * p_dec * tokens * 2
            + 6 * dec.vocab_size * dec.model_dim * tokens * 2)


def batch(tok, rows: int, length: int) -> dict:
    return {name: suites.synthetic_tokens(tok, rows, length, seed=i)
            for i, name in enumerate(("source", "target", "noised_target"))}


def our_step(cfg, host_batch):
    """(one-step callable, trainer, initial params on the host)."""
    from sonar_jax.train.text import TextTrainer

    trainer = TextTrainer(cfg, sharding.make_mesh(cfg.mesh))
    state = trainer.init(int(cfg.train.seed))
    initial = jax.tree.map(np.asarray, state.params)
    device_batch = trainer.shard_batch(host_batch)
    holder = {"state": state}

    def step():
        holder["state"], metrics = trainer.train_step(holder["state"], device_batch)
        return jax.block_until_ready(metrics)
    return step, trainer, initial


class TorchSonar:
    """The peer: encoder and decoder of our trainer's architecture, with its parameters."""

    def __init__(self, trainer, params: dict, device: str, autocast: bool):
        import torch
        from transformers.models.m2m_100.modeling_m2m_100 import M2M100Decoder, M2M100Encoder

        from benchmarks import hf_peer

        enc_cfg, dec_cfg = trainer.enc_cfg, trainer.dec_cfg
        self.encoder = M2M100Encoder(hf_peer._m2m100_config(
            enc_cfg, num_encoder_layers=enc_cfg.num_layers, num_decoder_layers=0,
            attn_implementation="sdpa"))
        hf_peer._load_exact(self.encoder, hf_peer.hf_state_dict(params["encoder"], enc_cfg, ""))
        self.decoder = M2M100Decoder(hf_peer._m2m100_config(
            dec_cfg, num_encoder_layers=0, num_decoder_layers=dec_cfg.num_layers,
            attn_implementation="sdpa"))
        hf_peer._load_exact(self.decoder, hf_peer.hf_state_dict(params["decoder"], dec_cfg, ""))
        self.modules = torch.nn.ModuleList([self.encoder, self.decoder]).to(device).train()
        loss = trainer.loss_cfg
        self.weights = (float(loss.mt_weight), float(loss.mse_weight), float(loss.dae_weight))
        self.ce = torch.nn.CrossEntropyLoss(label_smoothing=float(loss.label_smoothing))
        optim = trainer.cfg.optim
        self.clip = float(optim.clip_norm)
        self.optimizer = torch.optim.AdamW(
            self.modules.parameters(), lr=float(optim.lr), betas=(optim.b1, optim.b2),
            eps=float(optim.eps), weight_decay=float(optim.weight_decay),
            **({"fused": True} if device == "cuda" else {"foreach": True}))
        self.device, self.autocast = device, autocast

    def embed(self, ids):
        mask = (ids != 1).to(self.encoder.embed_tokens.weight.dtype)  # HF pad id 1
        states = self.encoder(input_ids=ids, attention_mask=(ids != 1).long()).last_hidden_state
        return (states * mask[..., None]).sum(1) / (mask.sum(1, keepdim=True) + 1e-7)

    def logits(self, embeddings, decoder_input):
        hidden = self.decoder(input_ids=decoder_input,
                              encoder_hidden_states=embeddings[:, None, :]).last_hidden_state
        return hidden @ self.decoder.embed_tokens.weight.T

    def loss(self, source, target, noised, decoder_input):
        mt_w, mse_w, dae_w = self.weights
        vocab = self.decoder.embed_tokens.weight.shape[0]
        e_src, e_tgt, e_noised = self.embed(source), self.embed(target), self.embed(noised)
        labels = target.reshape(-1)
        mt = self.ce(self.logits(e_src, decoder_input).float().reshape(-1, vocab), labels)
        dae = self.ce(self.logits(e_noised, decoder_input).float().reshape(-1, vocab), labels)
        mse = ((e_src.float() - e_tgt.float()) ** 2).mean()
        return mt_w * mt + mse_w * mse + dae_w * dae

    def step_fn(self, host_batch, compiled: bool):
        import torch

        from benchmarks import hf_peer

        ids = {k: torch.from_numpy(hf_peer.to_hf_ids(v.astype(np.int64))).to(self.device)
               for k, v in host_batch.items()}
        eos = torch.full_like(ids["target"][:, :1], hf_peer.HF_EOS)
        decoder_input = torch.cat([eos, ids["target"][:, :-1]], dim=1)
        loss_fn = torch.compile(self.loss) if compiled else self.loss

        def step():
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
                loss = loss_fn(ids["source"], ids["target"], ids["noised_target"],
                               decoder_input)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.modules.parameters(), self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return loss
        return harness.torch_ready(step)


def peak_memory_gb() -> dict:
    out = {}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["ours_peak_gb"] = stats["peak_bytes_in_use"] / 1e9
    try:
        import torch

        if torch.cuda.is_available():
            out["peer_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    except ImportError:
        pass
    return out


def run(suite: suites.Suite, args) -> dict:
    from sonar_jax.configs.text import get_config

    tok = suites.tokenizer()
    record = {"workload": "train", "variant": suite.train_variant, "cases": []}
    for rows, length in suite.train_batches:
        for remat in args.train_remat or [None]:
            cfg = get_config(suite.train_variant)
            if remat is not None:
                cfg.model.remat_policy = remat
            host_batch = batch(tok, rows, length)
            ours, trainer, initial = our_step(cfg, host_batch)
            sides = {"ours": ours}
            if not args.no_peer:
                device = suites.torch_device()
                autocast = cfg.model.dtype == "bfloat16"
                sides["peer"] = TorchSonar(trainer, initial, device, autocast).step_fn(
                    host_batch, compiled=False)
                if args.torch_compile:
                    sides["peer_compiled"] = TorchSonar(trainer, initial, device,
                                                        autocast).step_fn(host_batch, True)
            result = {"rows": rows, "length": length, "remat_policy": cfg.model.remat_policy,
                      "dtype": cfg.model.dtype, "params": trainer.num_params(),
                      **harness.compare(sides, args.repeats, wait_for_idle_s=args.wait_for_idle)}
            flops = model_flops(trainer.enc_cfg, trainer.dec_cfg, rows, length)
            harness.add_rates(result, {"tokens": rows * length, "model_tflop": flops / 1e12})
            if suite.peak_flops:
                for side in sides:
                    result[side]["mfu"] = flops / result[side]["median_s"] / suite.peak_flops
            result.update(peak_memory_gb())
            record["cases"].append(result)
            harness.log(f"train {rows}x{length} remat {cfg.model.remat_policy}: ours "
                        f"{result['ours']['tokens_per_s']:,.0f} tok/s"
                        + (f", torch {result['peer']['tokens_per_s']:,.0f}" if "peer" in result
                           else ""))
            del ours, trainer, sides
    return record


def table(record: dict) -> list[str]:
    rows = []
    for c in record["cases"]:
        mfu = lambda side: f", {c[side]['mfu']:.1%} MFU" if "mfu" in c[side] else ""  # noqa
        peer = (f"{harness.cell(c['peer'], 'tokens')}{mfu('peer')}" if "peer" in c else "")
        ratio = harness.ratio_cell(c) if "ours_over_peer" in c else ""
        rows.append(f"| train step {record['variant']} {c['rows']}×{c['length']}×3, remat "
                    f"{c['remat_policy']} | tokens/s | {harness.cell(c['ours'], 'tokens')}"
                    f"{mfu('ours')} | {peer} | {ratio} |")
        if "peer_compiled" in c:
            over = c["peer_compiled"]["median_s"] / c["ours"]["median_s"]
            rows.append(f"| … against the torch.compile peer | tokens/s | | "
                        f"{harness.cell(c['peer_compiled'], 'tokens')}{mfu('peer_compiled')} | "
                        f"{over:.2f} |")
    return rows
