"""Speech distillation data: manifests, frame-budget batches of padded waveforms with teacher
tokens, undecodable files skipped, resume, shards, grain workers and the teacher cache.

Uses the committed real-speech sample (data/sample/speech) and tiny synthetic WAVs.
"""

import collections
import json
import pathlib
import warnings

import grain
import numpy as np
import pytest
import soundfile

from sonar_jax import audio
from sonar_jax.configs.sections import speech_data as speech_data_config
from sonar_jax.data import state_from_json, state_to_json
from sonar_jax.data.buckets import BucketPlan
from sonar_jax.data import make_iterator
from sonar_jax.data.manifests import read_manifest
from sonar_jax.data.speech_pipeline import SpeechSource, frame_samples
from sonar_jax.data.teacher_cache import cache_teacher_embeddings
from sonar_jax.tokenizer import EOS, NllbTokenizer, UnknownLanguageError

SAMPLE = pathlib.Path(__file__).parents[1] / "data" / "sample" / "speech"
LANGS = ("eng_Latn", "fra_Latn", "ces_Latn", "nld_Latn")
# Synthetic clips: seconds, sample rate. 0.02 s is under min_seconds, 6 s over max_seconds.
CLIPS = [(0.3, 16000), (0.5, 22050), (0.8, 16000), (1.2, 8000), (1.7, 16000), (2.3, 22050),
         (0.02, 16000), (3.1, 16000), (6.0, 16000), (0.9, 16000), (1.4, 22050), (0.6, 16000)]
KEYS = ("waveform", "num_samples", "text")


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return NllbTokenizer(fixtures_dir / "spm" / "udhr.spm.model", LANGS)


def text_of(i):
    return f"clip number {i} says " + "la " * i + "."


def write_tsv(path, header, rows):
    path.write_text("\n".join(["\t".join(header)] + ["\t".join(map(str, r)) for r in rows])
                    + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """clips/NN.wav and two manifests (no duration column) splitting them."""
    root = tmp_path_factory.mktemp("speech")
    (root / "clips").mkdir()
    rng = np.random.default_rng(0)
    for i, (seconds, rate) in enumerate(CLIPS):
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)
        soundfile.write(root / "clips" / f"{i:02d}.wav", wave.astype(np.float32), rate,
                        subtype="PCM_16")
    header = ("audio", "transcription", "lang", "line")
    rows = [(f"clips/{i:02d}.wav", text_of(i), LANGS[i % 2], i) for i in range(len(CLIPS))]
    return [write_tsv(root / "a.tsv", header, rows[:7]),
            write_tsv(root / "b.tsv", header, rows[7:])]


def config(manifests, **fields):
    cfg = speech_data_config()
    cfg.update(dict(manifest=",".join(map(str, manifests)), max_seconds=4.0, min_seconds=0.1,
                    batch_max_frames=2048, max_text_len=32, window_size=5, num_epochs=1))
    cfg.update(fields)
    return cfg


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def same_batches(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def real_rows(batches):
    """(text ids, num_samples, row index, batch) of every real row."""
    for batch in batches:
        for row, n in enumerate(batch["num_samples"]):
            if n:
                text = batch["text"][row]
                yield tuple(text[text != 0]), int(n), row, batch


def expected_ids(tokenizer, text, lang, max_len):
    ids = tokenizer.encode(text, lang)
    return tuple(ids[:max_len - 1] + [EOS] if len(ids) > max_len else ids)


def check_shapes(batch, plan, rows_multiple, budget):
    """A batch of one bucket: F frames from S samples, rows * F <= budget, rows aligned, each
    real row in the shortest bucket that holds it, zeros past its samples; pad rows all 0."""
    rows, samples = batch["waveform"].shape
    frames = audio.num_frames(samples)
    assert frames in plan.lengths and frame_samples(frames) == samples
    assert rows == plan.rows[plan.lengths.index(frames)]
    assert rows * frames <= budget and rows % rows_multiple == 0
    assert batch["waveform"].dtype == np.float32 and batch["text"].dtype == np.int32
    assert batch["num_samples"].dtype == np.int32 and batch["num_samples"].shape == (rows,)
    for row, n in enumerate(batch["num_samples"]):
        assert not batch["waveform"][row, n:].any()
        if n:
            assert plan.lengths[plan.bucket(audio.num_frames(n))] == frames
        else:
            assert not batch["text"][row].any()


def test_committed_sample_batches(tokenizer):
    manifests = [SAMPLE / "fillets" / "speech" / f"{lang}.dev.tsv" for lang in ("nld_Latn",
                                                                              "ces_Latn")]
    cfg = config(manifests, max_seconds=12.0, batch_max_frames=4096, max_text_len=48,
                 window_size=32)
    rows = [row for m in manifests for row in read_manifest(m)]
    assert len(rows) >= 60 and {r.lang for r in rows} == {"nld_Latn", "ces_Latn"}
    batches = list(make_iterator(cfg, tokenizer, "speech", training=False, rows_multiple=2,
                                 shard_index=0, shard_count=1))
    plan = BucketPlan.build(max_len=audio.num_frames(192000), batch_max_tokens=4096,
                            rows_multiple=2)
    for batch in batches:
        assert tuple(batch) == KEYS
        check_shapes(batch, plan, 2, 4096)
    by_key = collections.defaultdict(list)
    for row in rows:
        by_key[expected_ids(tokenizer, row.text, row.lang, 48)].append(row.audio)
    got = list(real_rows(batches))
    assert len(got) == len(rows)  # every sample clip is under 12 s
    assert collections.Counter(k for k, *_ in got) == collections.Counter(
        {k: len(v) for k, v in by_key.items()})
    for key, n, row, batch in got[:20]:
        decoded = [audio.load_audio(path) for path in by_key[key]]
        assert any(np.array_equal(batch["waveform"][row, :n], w[:n])
                   and audio.num_frames(n) == audio.num_frames(w.size) for w in decoded)


def test_espeak_sample_has_the_same_lines():
    fillets = read_manifest(SAMPLE / "fillets" / "speech" / "ces_Latn.train.tsv")
    espeak = read_manifest(SAMPLE / "espeak" / "speech" / "eng_Latn.train.tsv")
    english = (SAMPLE / "fillets" / "train" / "eng_Latn.train").read_text(
        encoding="utf-8").splitlines()
    assert len(fillets) >= 100 and [r.text for r in espeak] == english[:len(espeak)]
    for manifest in SAMPLE.glob("*/speech/*.tsv"):
        assert all(pathlib.Path(r.audio).is_file() for r in read_manifest(manifest))
    for corpus in ("fillets", "espeak"):
        assert (SAMPLE / corpus / "NOTICE.md").is_file()
        assert (SAMPLE / corpus / "licenses" / "fillets-ng-data.copyright").is_file()


def test_synthetic_batches_drop_crop_and_truncate(synthetic, tokenizer, tmp_path):
    # Clip 1 claims 1 s but runs 6 s: it passes the duration filter, then is cropped.
    header = ("audio", "raw_text", "duration")
    folder = synthetic[0].parent
    lying = write_tsv(tmp_path / "lying.tsv", header,
                      [(folder / "clips" / "08.wav", text_of(8), 1.0),
                       (folder / "clips" / "03.wav", text_of(3), 1.2)])
    cfg = config([*synthetic, lying], max_text_len=8, lang="fra_Latn")
    iterator = make_iterator(cfg, tokenizer, "speech", training=False, rows_multiple=2,
                             shard_index=0, shard_count=1)
    batches = list(iterator)
    assert iterator.skips.dropped == {"shorter_than_min_seconds": 1, "longer_than_max_seconds": 1}
    plan = BucketPlan.build(max_len=audio.num_frames(64000), batch_max_tokens=2048,
                            rows_multiple=2)
    for batch in batches:
        check_shapes(batch, plan, 2, 2048)
    got = list(real_rows(batches))
    assert len(got) == len(CLIPS) - 2 + 2
    longest = max(n for _, n, _, _ in got)
    assert audio.num_frames(longest) == plan.lengths[-1] and longest == frame_samples(
        plan.lengths[-1])
    for key, *_ in got:
        assert len(key) <= 8 and key[-1] == EOS
    expected = {expected_ids(tokenizer, text_of(i), lang, 8)
                for i in range(len(CLIPS)) for lang in LANGS}
    assert {k for k, *_ in got} <= expected


def test_manifest_aliases_paths_and_errors(synthetic, tokenizer, tmp_path):
    clips = synthetic[0].parent / "clips"
    alias = write_tsv(tmp_path / "alias.tsv", ("n_samples", "tgt_text", "audio"),
                      [(16000, "hallo", clips / "00.wav"), (8000, "bonjour", clips / "01.wav")])
    rows = read_manifest(alias, lang="nld_Latn")
    assert [(r.text, r.lang, r.num_samples) for r in rows] == [("hallo", "nld_Latn", 16000),
                                                               ("bonjour", "nld_Latn", 8000)]
    assert rows[0].audio == str(clips / "00.wav")  # absolute paths stay as they are
    relative = read_manifest(synthetic[1])
    assert relative[0].audio == str(synthetic[1].parent / "clips" / "07.wav")
    assert relative[0].num_samples is None

    with pytest.raises(ValueError, match="no lang column"):
        read_manifest(alias)
    no_text = write_tsv(tmp_path / "no_text.tsv", ("audio", "lang"), [("x.wav", "eng_Latn")])
    with pytest.raises(ValueError, match=r"no_text.tsv, line 1: .*transcription"):
        read_manifest(no_text)
    ragged = write_tsv(tmp_path / "ragged.tsv", ("audio", "text", "lang"),
                       [("clips/00.wav", "a", "eng_Latn"), ("clips/01.wav", "b")])
    with pytest.raises(ValueError, match=r"ragged.tsv, line 3: 2 tab-separated"):
        read_manifest(ragged)
    missing = write_tsv(tmp_path / "missing.tsv", ("audio", "text", "lang"),
                        [(clips / "00.wav", "a", "eng_Latn"), ("nope.wav", "b", "eng_Latn")])
    with pytest.raises(FileNotFoundError, match=r"missing.tsv, line 3: audio file .*nope.wav"):
        SpeechSource([missing])
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all" * 50)
    headerless = write_tsv(tmp_path / "headerless.tsv", ("audio", "text", "lang"),
                           [("garbage.wav", "a", "eng_Latn")])
    with pytest.raises(ValueError, match=r"headerless.tsv, line 2: cannot read the audio header"):
        SpeechSource([headerless])
    unknown = write_tsv(tmp_path / "unknown.tsv", ("audio", "text", "lang"),
                        [(clips / "00.wav", "a", "eng_Latn"), (clips / "01.wav", "b", "xyz_Latn")])
    with pytest.raises(UnknownLanguageError, match=r"unknown.tsv, line 3"):
        make_iterator(config([unknown]), tokenizer, "speech", training=True, rows_multiple=1,
                      seed=0)
    with pytest.raises(ValueError, match="batch_max_frames"):
        make_iterator(config([alias], lang="nld_Latn", batch_max_frames=100), tokenizer, "speech",
                      training=True, rows_multiple=1, seed=0)


@pytest.fixture()
def with_corrupt(synthetic, tmp_path):
    """Eight good clips and two undecodable files that exist (duration given, so no header
    is read when the source is built)."""
    (tmp_path / "bad.ogg").write_bytes(b"OggS" + bytes(range(256)) * 8)
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + b"\x00" * 40 + b"garbage" * 100)
    clips = synthetic[0].parent / "clips"
    good = [(clips / f"{i:02d}.wav", text_of(i), "eng_Latn", CLIPS[i][0])
            for i in (0, 1, 2, 3, 4, 5, 9, 10)]
    rows = good[:3] + [("bad.ogg", "broken one", "eng_Latn", 1.0)] + good[3:] + [
        ("bad.wav", "broken two", "eng_Latn", 1.0)]
    return write_tsv(tmp_path / "corrupt.tsv", ("audio", "text", "lang", "duration"), rows)


def test_undecodable_files_are_skipped_once_each(with_corrupt, tokenizer):
    iterator = make_iterator(config([with_corrupt], num_epochs=2), tokenizer, "speech",
                             training=True, rows_multiple=2, seed=3, shard_index=0, shard_count=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(iterator)
    messages = [str(w.message) for w in caught if "skipping audio file" in str(w.message)]
    assert len(messages) == 2
    assert any("bad.ogg" in m for m in messages) and any("bad.wav" in m for m in messages)
    assert iterator.skips.skipped == 4 and len(iterator.skips.files) == 2
    assert iterator.skips.as_dict()["skipped_files"] == 2
    counts = collections.Counter(k for k, *_ in real_rows(batches))
    assert len(counts) == 8 and set(counts.values()) == {2}


def test_worker_processes_give_the_same_batches_and_count_skips(with_corrupt, tokenizer):
    make = lambda workers: make_iterator(  # noqa: E731
        config([with_corrupt], num_epochs=None, num_workers=workers), tokenizer, "speech",
        training=True, rows_multiple=2, seed=1, shard_index=0, shard_count=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = take(make(0), 8)
        workers = make(1)
        try:
            assert same_batches(take(workers, 8), expected)
            assert workers.skips.skipped >= 2 and len(workers.skips.files) == 2
        finally:
            workers.close()


@pytest.mark.parametrize("consumed", [0, 3, 7])
def test_resume_yields_exactly_the_next_batches(synthetic, tokenizer, consumed):
    cfg = config(synthetic, num_epochs=None)
    make = lambda: make_iterator(cfg, tokenizer, "speech", training=True, rows_multiple=2, seed=5,
                                 shard_index=0, shard_count=1)
    first = make()
    take(first, consumed)
    state = state_to_json(first)
    expected = take(first, 9)
    resumed = make()
    take(resumed, 2)
    state_from_json(resumed, state)
    assert state_to_json(resumed) == state
    assert same_batches(take(resumed, 9), expected)


def test_grain_orbax_handler_round_trip(synthetic, tokenizer, tmp_path):
    make = lambda: make_iterator(config(synthetic, num_epochs=None), tokenizer, "speech",
                                 training=True, rows_multiple=2, seed=2, shard_index=0,
                                 shard_count=1)
    first = make()
    take(first, 4)
    grain.checkpoint.CheckpointHandler().save(tmp_path, item=first)
    expected = take(first, 4)
    resumed = grain.checkpoint.CheckpointHandler().restore(tmp_path, item=make())
    assert same_batches(take(resumed, 4), expected)


def test_shards_partition_the_clips(synthetic, tokenizer):
    def keys(**shard):
        batches = make_iterator(config(synthetic), tokenizer, "speech", training=False,
                                rows_multiple=1, **shard)
        return [k for k, *_ in real_rows(batches)]
    everything = keys(shard_index=0, shard_count=1)
    halves = [keys(shard_index=i, shard_count=2) for i in range(2)]
    assert len(everything) == len(CLIPS) - 2 and all(halves)
    assert not set(halves[0]) & set(halves[1])
    assert sorted(halves[0] + halves[1]) == sorted(everything)


def fake_teacher(texts, lang):
    """An embedding that names its row: [clip number, language index, text length]."""
    return np.array([[int(t.split()[2]), LANGS.index(lang), len(t)] for t in texts], np.float32)


def test_teacher_cache_rows_line_up_and_stale_caches_are_refused(synthetic, tokenizer, tmp_path):
    cache = tmp_path / "teacher.npy"
    info = cache_teacher_embeddings(synthetic, fake_teacher, cache, batch_size=3)
    assert info["rows"] == len(CLIPS) and info["dim"] == 3
    table = np.load(cache)
    rows = [r for m in synthetic for r in read_manifest(m)]
    assert np.array_equal(table, fake_teacher([r.text for r in rows], "eng_Latn")
                          * [1, 0, 1] + [[0, LANGS.index(r.lang), 0] for r in rows])
    assert json.loads((tmp_path / "teacher.npy.json").read_text())["rows"] == len(CLIPS)

    cfg = config(synthetic, teacher_cache=str(cache))
    batches = list(make_iterator(cfg, tokenizer, "speech", training=False, rows_multiple=2,
                                 shard_index=0, shard_count=1))
    seen = 0
    for key, n, row, batch in real_rows(batches):
        number, lang, _ = batch["teacher"][row].astype(int)
        assert key == expected_ids(tokenizer, text_of(number), LANGS[lang], 32)
        assert LANGS[lang] == LANGS[number % 2]
        seen += 1
    assert seen == len(CLIPS) - 2  # the two dropped clips do not shift the rows after them
    for batch in batches:
        assert batch["teacher"].shape == (len(batch["num_samples"]), 3)
        assert not batch["teacher"][batch["num_samples"] == 0].any()

    edited = synthetic[1].read_text(encoding="utf-8").replace("clip number 9", "clip number 99")
    stale = tmp_path / "b.tsv"
    stale.write_text(edited, encoding="utf-8")
    (tmp_path / "clips").symlink_to(synthetic[1].parent / "clips")  # its relative audio paths
    with pytest.raises(ValueError, match="teacher cache .* is stale"):
        SpeechSource([synthetic[0], stale], teacher_cache=cache)
    with pytest.raises(ValueError, match="stale"):
        SpeechSource(synthetic[::-1], teacher_cache=cache)
    (tmp_path / "teacher.npy.json").unlink()
    with pytest.raises(FileNotFoundError, match="cache_teacher_embeddings"):
        SpeechSource(synthetic, teacher_cache=cache)
