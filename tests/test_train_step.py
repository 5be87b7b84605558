"""The text multi-loss train step: it learns, runs in bf16, reports NaN, and round-trips params."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sonar_jax.configs.text import get_config
from sonar_jax import functional, sharding
from sonar_jax.models.text_encoder import TextEncoder
from sonar_jax.tokenizer import NllbTokenizer
from sonar_jax.train import text as text_recipe

# Unoptimised CPU code generation: compiles ~3x faster; each test compares like with like.
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def batch(fixtures_dir):
    """16 rows: English UDHR sentences -> sentences of 15 other languages, encoder form."""
    tok = NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model")
    items = json.loads((fixtures_dir / "spm" / "udhr_sentences.json").read_text())
    english = [it["text"] for it in items if it["lang"] == "eng_Latn"]
    others = [it for it in items if it["lang"] != "eng_Latn"][:16]
    src = [tok.encode(english[i % len(english)][:60], "eng_Latn") for i in range(16)]
    tgt = [tok.encode(it["text"][:40], it["lang"]) for it in others]
    rng = np.random.default_rng(0)
    noised = [[t[0]] + [x for x in t[1:-1] if rng.random() > 0.2] + [t[-1]] for t in tgt]

    def pad(seqs):
        width = max(map(len, seqs))
        return np.array([s + [0] * (width - len(s)) for s in seqs], np.int32)
    return {"source": pad(src), "target": pad(tgt), "noised_target": pad(noised)}


def _trainer(**changes):
    cfg = get_config("tiny")
    cfg.mesh.update(data=2, fsdp=4, tensor=1)
    cfg.train.compiler_options = FAST_CPU_COMPILE
    for section, values in changes.items():
        cfg[section].update(values)
    return text_recipe.TextTrainer(cfg, sharding.make_mesh(cfg.mesh))


def test_loss_decreases(batch):
    trainer = _trainer(optim=dict(lr=3e-3, warmup_steps=5))
    state = trainer.init(0)
    global_batch = trainer.shard_batch(batch)
    history = []
    for _ in range(30):
        state, metrics = trainer.train_step(state, global_batch)
        history.append(jax.tree.map(float, metrics))
    first, last = history[0], history[-1]
    assert int(state.step) == 30
    assert all(np.isfinite(h["loss"]) for h in history)
    assert last["loss"] < 0.6 * first["loss"], (first["loss"], last["loss"])
    assert last["mt_loss"] < first["mt_loss"] and last["dae_loss"] < first["dae_loss"]
    assert last["mt_accuracy"] > first["mt_accuracy"]
    assert first["mt_tokens"] == (batch["target"] != 0).sum()
    assert first["mse_rows"] == 16
    assert first["learning_rate"] == 0.0 and history[5]["learning_rate"] == pytest.approx(3e-3)
    assert history[1]["grad_norm"] > 0 and first["update_skipped"] == 0

    # eval_step: no update, same numbers for the same state; its sums aggregate exactly.
    before = jax.tree.map(np.asarray, state.params)
    ev = jax.tree.map(float, trainer.eval_step(state, global_batch))
    assert ev["mt_loss_sum"] / ev["mt_tokens_sum"] == pytest.approx(ev["mt_loss"], rel=1e-6)
    assert ev["loss"] < last["loss"] + 0.1
    # Summed over two (equal) batches, the dataset-level figures equal the per-batch ones.
    summary = trainer.summarize_eval({k: 2 * v for k, v in ev.items()})
    for name in ("loss", "mt_loss", "mse_loss", "dae_loss", "mt_accuracy"):
        assert summary[name] == pytest.approx(ev[name], rel=1e-5), name
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)
    # A dev batch without noised targets gets the MT and MSE terms only.
    no_noise = trainer.shard_batch({k: batch[k] for k in ("source", "target")})
    ev2 = jax.tree.map(float, trainer.eval_step(state, no_noise))
    assert "dae_loss" not in ev2 and ev2["mt_loss"] == pytest.approx(ev["mt_loss"], rel=1e-5)

    # Exported params work with the inference code and survive further (donating) steps.
    exported = trainer.export_params(state)
    enc_cfg = trainer.enc_cfg
    emb = functional.encode(exported["encoder"], jnp.asarray(batch["source"][:2]),
                            config=enc_cfg).sentence_embeddings
    state, _ = trainer.train_step(state, global_batch)
    np.testing.assert_array_equal(
        exported["encoder"]["embed"]["embedding"],
        before["encoder"]["embed"]["embedding"])
    assert emb.shape == (2, enc_cfg.model_dim)


def test_bfloat16_compute_with_remat(batch):
    trainer = _trainer(model=dict(dtype="bfloat16", remat_policy="full"),
                       loss=dict(ce_chunk_size=64))
    state = trainer.init(0)
    state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    # Master weights stay float32.
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def test_nan_batch_gives_non_finite_loss_and_skips_the_update(batch):
    trainer = _trainer(loss=dict(mse_weight=0.0, dae_weight=0.0))
    state = trainer.init(0)
    poisoned_token = int(batch["source"][3, 2])
    table = state.params["encoder"]["embed"]["embedding"]
    state = state.replace(params={**state.params, "encoder": {
        **state.params["encoder"],
        "embed": {"embedding": table.at[poisoned_token].set(jnp.nan)}}})
    before = jax.tree.map(np.asarray, state.params)

    clean = {k: np.where(v == poisoned_token, 5, v) for k, v in batch.items()
             if k != "noised_target"}
    state, metrics = trainer.train_step(state, trainer.shard_batch(clean))
    assert np.isfinite(float(metrics["loss"]))

    before = jax.tree.map(np.asarray, state.params)
    dirty = {k: v for k, v in batch.items() if k != "noised_target"}
    state, metrics = trainer.train_step(state, trainer.shard_batch(dirty))
    assert not np.isfinite(float(metrics["loss"]))
    assert float(metrics["update_skipped"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


def test_bad_batches_are_clear_errors(batch):
    trainer = _trainer()
    with pytest.raises(ValueError, match="outside"):
        trainer.shard_batch({**batch, "target": batch["target"] + 5000})
    no_noise = trainer.shard_batch({"source": batch["source"], "target": batch["target"]})
    with pytest.raises(KeyError, match="noised_target"):
        trainer.train_step(trainer.init(0), no_noise)
    with pytest.raises(ValueError, match="row counts"):
        trainer.shard_batch({**batch, "target": batch["target"][:8]})


def test_init_from_given_params():
    trainer = _trainer()
    encoder = TextEncoder(trainer.enc_cfg, rngs=nnx.Rngs(7))
    state = trainer.init(0, init_params={"encoder": encoder})
    want = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params["encoder"]),
                 jax.tree.map(np.asarray, want))
    # The abstract state (orbax restore target) has the state's structure, shapes and shardings.
    abstract = trainer.abstract_state()
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    assert jax.tree.structure(jax.eval_shape(lambda: trainer.init(0))) == \
        jax.tree.structure(state)
    for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
        assert a.shape == x.shape and a.dtype == x.dtype and a.sharding == x.sharding
    kernel = state.params["encoder"]["layers"]["ffn"]["inner_proj"]["kernel"]
    assert kernel.sharding == trainer.param_shardings["encoder"]["layers"]["ffn"]["inner_proj"][
        "kernel"]
    with pytest.raises(ValueError, match="shape"):
        bad = jax.tree.map(np.asarray, want)
        bad["embed"]["embedding"] = bad["embed"]["embedding"][:10]
        trainer.init(0, init_params={"encoder": bad})


def test_the_attention_kernel_is_a_model_setting_of_the_recipe():
    """`model.attention` reaches both trained modules; a name it does not know is refused."""
    cfg = get_config("tiny")
    assert text_recipe.model_configs(cfg)[0].attention == "auto"
    cfg.model.attention = "xla"
    assert {c.attention for c in text_recipe.model_configs(cfg)} == {"xla"}
    cfg.model.attention = "flash"
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        text_recipe.model_configs(cfg)
