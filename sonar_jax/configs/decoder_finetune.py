"""The `decoder_finetune` recipe: the decoder fine-tuned on random interpolations of a frozen
encoder's embeddings (paper §3.1).

    sonar-jax train --config=decoder_finetune:tiny --workdir=runs/decoder \
        --config.init_from.encoder=runs/main_job/train/export/step_600/encoder \
        --config.init_from.decoder=runs/main_job/train/export/step_600/decoder

Both directories are converted models (`sonar-jax convert` or a text run's export): the encoder
stays frozen, the decoder is trained. Exports go to workdir/export/step_N/{encoder,decoder}
(the encoder copied unchanged, so the pair loads together). Every section but the loss, the
interpolation, the optimizer horizon and the evaluation is the `text` recipe's.
"""

import ml_collections

from sonar_jax.configs import text


def get_config(variant: str = "basic") -> ml_collections.ConfigDict:
    if variant not in ("tiny", "basic"):
        raise ValueError(f"unknown variant {variant!r}; expected 'tiny' or 'basic'")
    small = variant == "tiny"
    cfg = text.get_config(variant)
    cfg.kind = "decoder_finetune"
    # Only the CE's settings apply: the loss is CE(dec(a·enc(x) + (1 − a)·enc(y)) -> y).
    cfg.loss = ml_collections.ConfigDict(dict(label_smoothing=0.1, ce_chunk_size=8192))
    # a ~ uniform[low, high] or Beta(alpha, beta), per row; the paper does not say which.
    cfg.interpolation = ml_collections.ConfigDict(dict(
        distribution="uniform", low=0.0, high=1.0, alpha=1.0, beta=1.0))
    cfg.data.noise.enabled = False
    cfg.eval_data.noise.enabled = False
    cfg.optim.lr = 5e-4 if small else 5e-5
    cfg.optim.schedule = "cosine" if small else "inverse_sqrt"
    cfg.optim.warmup_steps = 20 if small else 1000
    cfg.optim.decay_steps = 180 if small else 0
    cfg.optim.final_lr_fraction = 0.1
    cfg.train.num_steps = 200 if small else 50_000  # the paper: 50k extra steps
    # Every eval.every_steps: dev loss, and auto-encoding chrF++ (decode enc(y) back into y's
    # language; greedy) on the first `sentences` lines of each language of a FLORES folder.
    cfg.eval = ml_collections.ConfigDict(dict(
        every_steps=100 if small else 2000,
        autoencode=dict(path=cfg.eval.xsim.path, split="dev", langs="", sentences=100)))
    return cfg
