"""Text training data: TSV and FLORES sources, bucketed token-budget batches from grain, epochs,
per-host shards, and an iterator state that resumes on the exact next batch.

The parallel text is built from tests/fixtures/spm/udhr_sentences.json: line j of every language
is the first j + 2 words (characters for Chinese) of that language's Article 2 sentence, so lines
are aligned across languages, distinct, and of many lengths.
"""

import collections
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading

import grain
import numpy as np
import pytest

from sonar_jax.configs.sections import text_data as text_data_config
from sonar_jax.data import make_iterator, state_from_json, state_to_json, windows
from sonar_jax.data.text import FloresSource, TfdsSource, TsvSource
from sonar_jax.data.buckets import BucketPlan
from sonar_jax.data.text import resolve_pairs
from sonar_jax.tokenizer import EOS, NllbTokenizer, UnknownLanguageError

LANGS = ("eng_Latn", "fra_Latn", "rus_Cyrl", "zho_Hans")
LINES = 20
KEYS = ("source", "target", "noised_target")


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model")


@pytest.fixture(scope="module")
def lines(fixtures_dir):
    entries = json.loads((fixtures_dir / "spm" / "udhr_sentences.json").read_text())
    article2 = {e["lang"]: e["text"] for e in entries[1:32:2]}
    out = {}
    for lang in LANGS:
        words, sep = article2[lang].split(), " "
        if len(words) < LINES + 2:
            words, sep = list(article2[lang]), ""
        out[lang] = [sep.join(words[:j + 2]) for j in range(LINES)]
    return out


@pytest.fixture(scope="module")
def flores_root(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("flores")
    (root / "dev").mkdir()
    for lang in LANGS:
        (root / "dev" / f"{lang}.dev").write_text("\n".join(lines[lang]) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tsv_path(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("tsv") / "pairs.tsv"
    rows = ["tgt_lang\tsrc_text\tnote\ttgt_text\tsrc_lang"]
    for tgt in ("fra_Latn", "rus_Cyrl"):
        rows += [f"{tgt}\t{e}\tx\t{t}\teng_Latn" for e, t in zip(lines["eng_Latn"], lines[tgt])]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def config(**fields):
    cfg = text_data_config()
    cfg.update(dict(max_len=64, batch_max_tokens=256, window_size=64, num_epochs=1))
    cfg.update(fields)
    return cfg


def flores_config(root, **fields):
    return config(format="flores", path=str(root), split="dev", pairs="*-*", **fields)


def row_keys(batch):
    """(source ids, target ids) of every real row of a batch."""
    keys = []
    for source, target in zip(batch["source"], batch["target"]):
        if source[0]:
            keys.append((tuple(source[source != 0]), tuple(target[target != 0])))
    return keys


def expected_keys(source, tokenizer, max_len):
    def ids(text, lang):
        tokens = tokenizer.encode(text, lang)
        return tuple(tokens[:max_len - 1] + [EOS] if len(tokens) > max_len else tokens)
    records = [source[i] for i in range(len(source))]
    return [(ids(r["src_text"], r["src_lang"]), ids(r["tgt_text"], r["tgt_lang"])) for r in records]


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def same_batches(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_batches_have_the_promised_format(flores_root, tokenizer):
    cfg = flores_config(flores_root)
    plan = BucketPlan.build(max_len=64, batch_max_tokens=256, rows_multiple=4)
    assert plan.lengths == (8, 16, 32, 64) and plan.rows == (32, 16, 8, 4)
    batches = list(make_iterator(cfg, tokenizer, "text", training=True, rows_multiple=4, seed=0,
                                 shard_index=0, shard_count=1))
    lang_ids = {tokenizer.lang_id(lang) for lang in LANGS}
    noised_differs = 0
    for batch in batches:
        assert tuple(batch) == KEYS
        shape = batch["source"].shape
        assert shape in plan.shapes and shape[0] * shape[1] <= 256 and shape[0] % 4 == 0
        for key in KEYS:
            assert batch[key].dtype == np.int32 and batch[key].shape == shape
        real = batch["source"][:, 0] != 0
        for key in KEYS:
            assert not batch[key][~real].any(), "pad rows must be all pad"
            rows = batch[key][real]
            assert set(rows[:, 0]) <= lang_ids
            lengths = np.count_nonzero(rows, axis=1)
            assert (rows[np.arange(len(rows)), lengths - 1] == EOS).all()
            right_padded = (rows != 0) == (np.arange(shape[1]) < lengths[:, None])
            assert right_padded.all()
        noised_differs += int(np.any(batch["noised_target"] != batch["target"]))
        assert shape[1] == plan.lengths[plan.bucket(int(np.count_nonzero(
            np.stack([batch[k] for k in KEYS]), axis=2).max()))]
    assert noised_differs > len(batches) // 2
    assert len({b["source"].shape for b in batches}) > 1


def test_noise_off_gives_two_arrays(tsv_path, tokenizer):
    cfg = config(path=str(tsv_path))
    cfg.noise.enabled = False
    batch = next(make_iterator(cfg, tokenizer, "text", training=True, rows_multiple=2, seed=0,
                               shard_index=0, shard_count=1))
    assert tuple(batch) == ("source", "target")


def test_every_example_once_per_epoch_in_a_new_order(flores_root, tokenizer):
    cfg = flores_config(flores_root, window_size=len(LANGS) * 3 * LINES, num_epochs=3)
    expected = expected_keys(FloresSource(flores_root, "dev", ["*-*"]), tokenizer, 64)
    assert len(set(expected)) == len(expected) == 240
    batches = list(make_iterator(cfg, tokenizer, "text", training=True, rows_multiple=4, seed=1,
                                 shard_index=0, shard_count=1))
    seen = collections.Counter(key for batch in batches for key in row_keys(batch))
    assert seen == collections.Counter(expected * 3)
    # window == epoch here, so each epoch is a run of batches; the grouping changes every epoch
    groupings, epoch, done = [], [], 0
    for batch in batches:
        epoch.append(frozenset(row_keys(batch)))
        done += len(row_keys(batch))
        if done % 240 == 0:
            groupings.append(set(epoch))
            assert {k for group in epoch for k in group} == set(expected)
            epoch = []
    assert len(groupings) == 3 and groupings[0] != groupings[1] != groupings[2]


class FakeHosts:
    """Threads standing in for the processes of a multi-host run: they meet in the all-gather."""

    def __init__(self, count: int):
        self.barrier = threading.Barrier(count, timeout=60)
        self.counts = [None] * count
        self.local = threading.local()

    def max_over_hosts(self, counts):
        self.counts[self.local.host] = counts
        self.barrier.wait()
        agreed = np.max(self.counts, axis=0)
        self.barrier.wait()
        return agreed

    def run(self, host_fn):
        """[host_fn(host) for every host], each call in its own thread."""
        results = [None] * len(self.counts)

        def host(index):
            self.local.host = index
            results[index] = host_fn(index)

        threads = [threading.Thread(target=host, args=(i,)) for i in range(len(self.counts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


@pytest.mark.parametrize("window_size", [64, 13])
def test_hosts_get_disjoint_shards_in_the_same_shapes(tsv_path, tokenizer, monkeypatch,
                                                      window_size):
    # 40 records over 3 hosts: 14, 13, 13. With windows of 13 the first host has one window
    # more; the others must follow it with all-pad batches.
    hosts = FakeHosts(3)
    monkeypatch.setattr(windows, "_max_over_hosts", hosts.max_over_hosts)
    cfg = config(path=str(tsv_path), window_size=window_size)
    per_host = hosts.run(lambda i: list(make_iterator(cfg, tokenizer, "text", training=True,
                                                      rows_multiple=2, seed=4, shard_index=i,
                                                      shard_count=3)))
    assert len({len(batches) for batches in per_host}) == 1
    if window_size == 13:
        assert not per_host[1][-1]["source"].any()
    for step in zip(*per_host):
        assert len({batch["source"].shape for batch in step}) == 1
    shards = [collections.Counter(k for b in batches for k in row_keys(b)) for batches in per_host]
    assert [sum(s.values()) for s in shards] == [14, 13, 13]
    assert sum(shards, collections.Counter()) == collections.Counter(
        expected_keys(TsvSource(tsv_path), tokenizer, 64))


def test_hosts_resume_together(tsv_path, tokenizer, monkeypatch):
    hosts = FakeHosts(3)
    monkeypatch.setattr(windows, "_max_over_hosts", hosts.max_over_hosts)
    cfg = config(path=str(tsv_path), window_size=5, num_epochs=None)
    make = lambda i: make_iterator(cfg, tokenizer, "text", training=True, rows_multiple=2, seed=4,
                                   shard_index=i, shard_count=3)
    states, expected = [None] * 3, [None] * 3

    def first_run(i):
        iterator = make(i)
        take(iterator, 4)
        states[i] = state_to_json(iterator)
        expected[i] = take(iterator, 6)

    def resumed_run(i):
        iterator = make(i)
        state_from_json(iterator, states[i])
        return take(iterator, 6)

    hosts.run(first_run)
    resumed = hosts.run(resumed_run)
    assert all(same_batches(resumed[i], expected[i]) for i in range(3))


HOST_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from sonar_jax.configs.sections import text_data
from sonar_jax.data import make_iterator
from sonar_jax.tokenizer import NllbTokenizer
cfg = text_data()
cfg.update(dict(path=sys.argv[3], max_len=64, batch_max_tokens=256, window_size=13))
batches = list(make_iterator(cfg, NllbTokenizer(sys.argv[4]), "text", training=False,
                             rows_multiple=2))
print(json.dumps([[list(b["source"].shape), int((b["source"][:, 0] != 0).sum())]
                  for b in batches]))
"""


@pytest.mark.slow
def test_two_processes_agree_on_shapes(tsv_path, fixtures_dir):
    """Two JAX processes over loopback (gloo): the all-gather of bucket counts really runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]),
               JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, address, str(i), str(tsv_path),
                               str(fixtures_dir / "spm" / "udhr.spm.model")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    steps = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [[shape for shape, _ in host] for host in steps] == [[s for s, _ in steps[0]]] * 2
    assert [sum(rows for _, rows in host) for host in steps] == [20, 20]


@pytest.mark.parametrize("consumed", [0, 3, 11])
def test_resume_yields_exactly_the_next_batches(flores_root, tokenizer, consumed):
    cfg = flores_config(flores_root, window_size=50, num_epochs=None)
    make = lambda: make_iterator(cfg, tokenizer, "text", training=True, rows_multiple=4, seed=5,
                                 shard_index=0, shard_count=1)
    first = make()
    take(first, consumed)
    state = state_to_json(first)
    expected = take(first, 30)
    resumed = make()
    take(resumed, 2)  # a used iterator is moved back just as well
    state_from_json(resumed, state)
    assert state_to_json(resumed) == state  # saving again before the next batch loses nothing
    assert same_batches(take(resumed, 30), expected)


def test_worker_processes_give_the_same_batches_and_resume(tsv_path, tokenizer):
    make = lambda workers: make_iterator(  # noqa: E731
        config(path=str(tsv_path), window_size=13, num_epochs=None, num_workers=workers),
        tokenizer, "text", training=True, rows_multiple=4, seed=5, shard_index=0, shard_count=1)
    expected = take(make(0), 12)
    workers = make(2)
    try:
        assert same_batches(take(workers, 5), expected[:5])
        state = state_to_json(workers)
    finally:
        workers.close()
    resumed = make(2)
    try:
        state_from_json(resumed, state)
        assert same_batches(take(resumed, 7), expected[5:])
    finally:
        resumed.close()


def test_grain_orbax_handler_round_trip(flores_root, tokenizer, tmp_path):
    cfg = flores_config(flores_root, window_size=50, num_epochs=None)
    make = lambda: make_iterator(cfg, tokenizer, "text", training=True, rows_multiple=4, seed=5,
                                 shard_index=0, shard_count=1)
    first = make()
    take(first, 7)
    grain.checkpoint.CheckpointHandler().save(tmp_path, item=first)
    expected = take(first, 5)
    resumed = grain.checkpoint.CheckpointHandler().restore(tmp_path, item=make())
    assert same_batches(take(resumed, 5), expected)


def test_eval_iterator_is_one_deterministic_pass(tsv_path, tokenizer):
    cfg = config(path=str(tsv_path), num_epochs=None, shuffle=True)
    run = lambda: list(make_iterator(cfg, tokenizer, "text", training=False, rows_multiple=2,
                                     shard_index=0, shard_count=1))
    batches = run()
    expected = expected_keys(TsvSource(tsv_path), tokenizer, 64)
    assert sorted(k for b in batches for k in row_keys(b)) == sorted(expected)
    assert same_batches(batches, run())


def test_long_rows_are_truncated_keeping_eos(flores_root, tokenizer):
    cfg = flores_config(flores_root, max_len=10, batch_max_tokens=80, length_buckets=(10,))
    for batch in make_iterator(cfg, tokenizer, "text", training=True, rows_multiple=8, seed=0,
                               shard_index=0, shard_count=1):
        assert batch["source"].shape == (8, 10)
        for key in KEYS:
            lengths = np.count_nonzero(batch[key], axis=1)
            rows = batch[key][lengths > 0]
            assert (rows[np.arange(len(rows)), lengths[lengths > 0] - 1] == EOS).all()


def test_pairs_resolve_wildcards():
    langs = ["deu_Latn", "eng_Latn", "fra_Latn"]
    assert resolve_pairs(["*-eng_Latn"], langs) == [("deu_Latn", "eng_Latn"),
                                                    ("fra_Latn", "eng_Latn")]
    assert len(resolve_pairs(["*-*"], langs)) == 6
    assert resolve_pairs(["eng_Latn-fra_Latn", "eng_Latn-*"], langs) == [
        ("eng_Latn", "fra_Latn"), ("eng_Latn", "deu_Latn")]
    with pytest.raises(ValueError, match="'kor_Hang'"):
        resolve_pairs(["kor_Hang-eng_Latn"], langs)
    with pytest.raises(ValueError, match="form 'src-tgt'"):
        resolve_pairs(["eng_Latn"], langs)


def test_flores_pairs_and_line_alignment(flores_root, tmp_path, lines):
    source = FloresSource(flores_root, "dev", ["*-eng_Latn"])
    assert len(source) == 3 * LINES and source.langs == sorted(LANGS)
    assert source[LINES + 4] == {"src_text": lines["rus_Cyrl"][4], "src_lang": "rus_Cyrl",
                                 "tgt_text": lines["eng_Latn"][4], "tgt_lang": "eng_Latn"}
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "eng_Latn.dev").write_text("a\nb\nc\n")
    (tmp_path / "dev" / "fra_Latn.dev").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"eng_Latn\.dev has 3 lines but .*fra_Latn\.dev has 2"):
        FloresSource(tmp_path, "dev", ["*-*"])
    with pytest.raises(FileNotFoundError, match="no FLORES files"):
        FloresSource(tmp_path, "devtest", ["*-*"])


def test_tsv_layouts(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("Hello\tBonjour\n\nYes\tOui\n")
    source = TsvSource(plain, src_lang="eng_Latn", tgt_lang="fra_Latn")
    assert len(source) == 2 and source[1] == {"src_text": "Yes", "src_lang": "eng_Latn",
                                              "tgt_text": "Oui", "tgt_lang": "fra_Latn"}
    four = tmp_path / "four.tsv"
    four.write_text("Hello\tHallo\teng_Latn\tdeu_Latn\n")
    assert TsvSource(four)[0]["tgt_lang"] == "deu_Latn"
    with pytest.raises(ValueError, match="no src_lang/tgt_lang columns"):
        TsvSource(plain)
    with pytest.raises(ValueError, match="also given"):
        TsvSource(four, src_lang="eng_Latn", tgt_lang="fra_Latn")
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes(b"Hello\tBonjour\r\nYes\tOui\r\n")
    assert TsvSource(crlf, src_lang="eng_Latn", tgt_lang="fra_Latn")[0]["tgt_text"] == "Bonjour"
    half = tmp_path / "half.tsv"
    half.write_text("src_text\ttgt_text\tsrc_lang\nHello\tHallo\teng_Latn\n")
    with pytest.raises(ValueError, match="only one of src_lang, tgt_lang"):
        TsvSource(half, src_lang="eng_Latn", tgt_lang="deu_Latn")


def test_malformed_input_errors_name_the_place(tmp_path, tokenizer):
    bad = tmp_path / "bad.tsv"
    bad.write_text("src_text\ttgt_text\tsrc_lang\ttgt_lang\nA\tB\teng_Latn\tfra_Latn\n"
                   "only one column\n")
    with pytest.raises(ValueError, match=r"bad\.tsv, line 3: 1 tab-separated columns, expected 4"):
        TsvSource(bad)
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("Hello\tBonjour\nYes\tGrüß\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.tsv, line 2: not UTF-8"):
        TsvSource(latin1, src_lang="eng_Latn", tgt_lang="deu_Latn")
    three = tmp_path / "three.tsv"
    three.write_text("a\tb\tc\n")
    with pytest.raises(ValueError, match=r"three\.tsv, line 1: 3 tab-separated columns"):
        TsvSource(three)
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("Hello\tBonjour\teng_Latn\tfr\n")
    with pytest.raises(UnknownLanguageError, match="'fr'"):
        make_iterator(config(path=str(unknown)), tokenizer, "text", training=True, rows_multiple=1,
                      seed=0, shard_index=0, shard_count=1)
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        TsvSource(tmp_path / "missing.tsv")


def test_config_errors(tsv_path, tokenizer):
    make = lambda cfg, **kw: make_iterator(  # noqa: E731
        cfg, tokenizer, "text", training=True, seed=0,
        **{"rows_multiple": 4, "shard_index": 0, "shard_count": 1, **kw})
    with pytest.raises(ValueError, match="batch_max_tokens 200 cannot hold 4 rows"):
        make(config(path=str(tsv_path), batch_max_tokens=200))
    with pytest.raises(ValueError, match="longest length bucket 32 is shorter than max_len 64"):
        make(config(path=str(tsv_path), length_buckets=(16, 32)))
    with pytest.raises(ValueError, match="shard 50 of 60 is empty"):
        make(config(path=str(tsv_path)), shard_index=50, shard_count=60)
    with pytest.raises(ValueError, match="unknown text data format 'csv'"):
        make(config(path=str(tsv_path), format="csv"))


def test_tfds_source_says_what_to_install():
    if importlib.util.find_spec("tensorflow_datasets") is not None:
        pytest.skip("tensorflow-datasets is installed; this checks the message without it")
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        TfdsSource("wmt14_translate/de-en", "validation", src_field="de", tgt_field="en",
                   src_lang="deu_Latn", tgt_lang="eng_Latn")
