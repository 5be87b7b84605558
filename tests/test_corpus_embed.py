"""`sonar-jax embed` over a corpus: inputs of every kind read by range, shards equal to the
pipeline's embeddings, resuming (also after SIGTERM and SIGKILL), and bad input named."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sonar_jax import cli
from sonar_jax.corpus import inputs, shards
from sonar_jax.corpus.embed import embed_corpus
from sonar_jax.corpus.shards import EmbeddingCorpus

ROOT = pathlib.Path(__file__).parent.parent
SAMPLE = ROOT / "data" / "sample" / "libreoffice"
ENCODER = pathlib.Path(__file__).parent / "fixtures" / "trained" / "main_job_tiny" / "encoder"
LANGS = ("eng_Latn", "fra_Latn", "rus_Cyrl")


def _lines(lang, split="dev"):
    return (SAMPLE / split / f"{lang}.{split}").read_text("utf-8").splitlines()


def _read(source, start=0, stop=None, chunk=7):
    texts, langs = [], []
    for chunk_texts, chunk_langs in inputs.iter_rows(source, start, stop or source.rows, chunk):
        texts += chunk_texts
        langs += chunk_langs
    return texts, langs


@pytest.fixture(scope="module")
def pipeline():
    from sonar_jax.pipelines import TextToEmbeddingModelPipeline

    return TextToEmbeddingModelPipeline(ENCODER)


@pytest.fixture
def flores(tmp_path):
    """A FLORES split folder with three of the sample's languages (600 rows)."""
    folder = tmp_path / "dev"
    folder.mkdir()
    for lang in LANGS:
        shutil.copy(SAMPLE / "dev" / f"{lang}.dev", folder)
    return folder


def _embed(folder, out, **options):
    return embed_corpus([folder], out, model=ENCODER, progress=False,
                        **{"shard_rows": 128, **options})


# ----------------------------------------------------------------------------------------------
# Inputs


def test_every_input_kind_reads_any_range(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = _lines("fra_Latn") + ["", "a last line without a newline"]
    (tmp_path / "fra_Latn.txt").write_text("\n".join(texts), encoding="utf-8")
    langs = [LANGS[i % 3] for i in range(len(texts))]
    (tmp_path / "mixed.tsv").write_text(
        "id\ttext\tlang\n" + "".join(f"{i}\t{t}\t{lang}\n"
                                     for i, (t, lang) in enumerate(zip(texts, langs))),
        encoding="utf-8")
    pq.write_table(pa.table({"sentence": texts, "code": langs}), tmp_path / "mixed.parquet",
                   row_group_size=37)
    (text,) = inputs.open_inputs([tmp_path / "fra_Latn.txt"], block_rows=50)
    (tsv,) = inputs.open_inputs([tmp_path / "mixed.tsv"], lang_column="lang", block_rows=50)
    (table,) = inputs.open_inputs([tmp_path / "mixed.parquet"], text_column="sentence",
                                  lang_column="code", block_rows=50)
    assert text.lang == "fra_Latn" and tsv.lang is None
    for source, want_langs in ((text, ["fra_Latn"] * len(texts)), (tsv, langs),
                               (table, langs)):
        assert source.rows == len(texts) == 202
        for start, stop in ((0, 202), (0, 50), (50, 100), (100, 202), (150, 160), (199, 202)):
            assert _read(source, start, stop) == (texts[start:stop], want_langs[start:stop]), \
                (source.kind, start)


def test_a_flores_folder_is_its_language_files(flores):
    sources = inputs.open_inputs([flores], block_rows=100)
    assert [s.lang for s in sources] == sorted(LANGS)
    assert [s.rows for s in sources] == [200] * 3
    assert _read(sources[1])[0] == _lines(sorted(LANGS)[1])


def test_input_errors_name_the_file(tmp_path, flores):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    open_ = lambda path, **kw: inputs.open_inputs([path], **{"block_rows": 10, **kw})  # noqa
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        open_(tmp_path / "missing.txt", lang="eng_Latn")
    with pytest.raises(ValueError, match="holds no LANG.SPLIT files"):
        open_(SAMPLE)
    with pytest.raises(ValueError, match="the file name says fra_Latn but --lang says deu_Latn"):
        open_(flores / "fra_Latn.dev", lang="deu_Latn")
    (tmp_path / "plain.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="plain.txt: no language for its sentences; pass --lang"):
        open_(tmp_path / "plain.txt")
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    (source,) = open_(tmp_path / "latin1.txt", lang="fra_Latn")
    with pytest.raises(ValueError, match=r"latin1.txt, line 2: not UTF-8"):
        _read(source)
    (tmp_path / "t.tsv").write_text("sentence\tlang\nhello\teng_Latn\n")
    with pytest.raises(ValueError, match=r"t.tsv has no column 'text' \(its columns: sentence, "
                                         r"lang\); name the text column with --text-column"):
        open_(tmp_path / "t.tsv", lang_column="lang")
    pq.write_table(pa.table({"sentence": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="t.parquet has no column 'text'"):
        open_(tmp_path / "t.parquet", lang="eng_Latn")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet is not a readable Parquet file"):
        open_(tmp_path / "broken.parquet", lang="eng_Latn")
    with pytest.raises(ValueError, match="--lang and --lang-column were both given"):
        open_(tmp_path / "t.tsv", lang="eng_Latn", lang_column="lang")


# ----------------------------------------------------------------------------------------------
# Embedding


def test_shards_hold_the_pipelines_embeddings_and_a_rerun_does_nothing(tmp_path, flores,
                                                                       pipeline):
    out = tmp_path / "out"
    result = _embed(flores, out)
    manifest = result.manifest
    assert result.embedded == manifest["rows"] == 600
    assert len(manifest["shards"]) == 3 * 2  # 200 rows a file: 128 + 72
    corpus = EmbeddingCorpus(out)
    row = 0
    for lang in sorted(LANGS):
        texts = _lines(lang)
        for start in (0, 128):
            want = pipeline.predict(texts[start:start + 128], lang, batch_size=64)
            got = corpus.take(np.arange(row, row + len(want)))
            np.testing.assert_array_equal(got, want)
            row += len(want)
    record = manifest["shards"][1]
    assert record["source_rows"] == [128, 200] and record["rows"] == [128, 200]
    assert record["file"] == "shards/000001.npy"
    before = (out / shards.MANIFEST_FILE).read_bytes()
    again = _embed(flores, out)
    assert again.embedded == 0 and (out / shards.MANIFEST_FILE).read_bytes() == before


def test_float16_and_parquet_shards(tmp_path, flores):
    pytest.importorskip("pyarrow")
    _embed(flores, tmp_path / "npy")
    reference = EmbeddingCorpus(tmp_path / "npy")
    rows = np.arange(len(reference))
    for fmt, dtype in (("parquet", "float32"), ("npy", "float16"), ("parquet", "float16")):
        out = tmp_path / f"{fmt}-{dtype}"
        _embed(flores, out, shard_format=fmt, output_dtype=dtype)
        got = EmbeddingCorpus(out).take(rows)
        want = reference.take(rows).astype(dtype).astype(np.float32)
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "parquet-float16" / "shards" / "000000.parquet").is_file()


def test_damaged_or_missing_shards_are_redone(tmp_path, flores):
    out = tmp_path / "out"
    _embed(flores, out)
    want = [(out / "shards" / f"{i:06d}.npy").read_bytes() for i in range(6)]
    manifest = (out / shards.MANIFEST_FILE).read_bytes()
    (out / "shards" / "000002.json").unlink()                      # never recorded
    with open(out / "shards" / "000004.npy", "r+b") as f:          # damaged
        f.seek(200)
        f.write(b"\0\0\0\0")
    (out / "shards" / "000005.npy").unlink()                       # lost
    (out / shards.MANIFEST_FILE).unlink()
    result = _embed(flores, out)
    assert result.embedded == 128 + 128 + 72
    assert [(out / "shards" / f"{i:06d}.npy").read_bytes() for i in range(6)] == want
    assert (out / shards.MANIFEST_FILE).read_bytes() == manifest


def _another_model(tmp_path, perturb_params=False, reverse_langs=False):
    from sonar_jax import model_dir

    kind, cfg = model_dir.read_config(ENCODER)
    params = model_dir.load_params(ENCODER)
    if perturb_params:
        params["embed"]["embedding"] = np.asarray(params["embed"]["embedding"]) * 1.01
    tokenizer = model_dir.load_tokenizer(ENCODER)
    if reverse_langs:
        tokenizer = type(tokenizer)(tokenizer.spm_path, tokenizer.langs[::-1])
    return model_dir.write_model_dir(tmp_path / f"model-{perturb_params}-{reverse_langs}",
                                     kind, cfg, params, tokenizer)


def test_run_errors_name_what_changed(tmp_path, flores):
    out = tmp_path / "out"
    _embed(flores, out)
    (flores / "rus_Cyrl.dev").write_text("\n".join(_lines("rus_Cyrl")[::-1]) + "\n")
    with pytest.raises(ValueError, match=r"input .*rus_Cyrl.dev changed since .*run.json was "
                                         r"written \(sha256 .*\); restore it, or pass "
                                         r"--overwrite"):
        _embed(flores, out)
    shutil.copy(SAMPLE / "dev" / "rus_Cyrl.dev", flores)
    with pytest.raises(ValueError, match="was started with shard_rows = 128 .now 100."):
        _embed(flores, out, shard_rows=100)
    with pytest.raises(ValueError, match="holds embeddings made with another model"):
        embed_corpus([flores], out, model=_another_model(tmp_path, perturb_params=True),
                     shard_rows=128, progress=False)
    with pytest.raises(ValueError, match="holds embeddings made with another tokenizer"):
        embed_corpus([flores], out, model=_another_model(tmp_path, reverse_langs=True),
                     shard_rows=128, progress=False)
    record_path = out / "shards" / "000003.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "model": "0" * 64}))
    (out / shards.MANIFEST_FILE).unlink()
    with pytest.raises(ValueError, match=r"000003.npy was written by another model or "
                                         r"tokenizer than this run's"):
        _embed(flores, out)
    with pytest.raises(FileNotFoundError, match="has no manifest.json; its embed run has not "
                                                "finished: rerun the same"):
        EmbeddingCorpus(out)
    result = _embed(flores, out, overwrite=True, shard_rows=100)
    assert result.embedded == 600 and len(result.manifest["shards"]) == 6
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a sonar-jax embed output"):
        _embed(flores, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("text\tlang\nhello\teng_Latn\nbonjour\txxx_Xxxx\n")
    with pytest.raises(ValueError, match=r"bad.tsv, row 1: unknown language code 'xxx_Xxxx'"):
        embed_corpus([tsv], tmp_path / "tsv-out", model=ENCODER, lang_column="lang",
                     progress=False)


def test_cli_errors_exit_1_with_the_message(tmp_path, capsys):
    code = cli.main(["embed", "--model", str(ENCODER), "--input", str(tmp_path / "none.txt"),
                     "--output", str(tmp_path / "out"), "--lang", "eng_Latn", "--quiet"])
    assert code == 1
    assert "none.txt does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Interrupted runs


def _cli_embed(folder, out, *extra):
    return [sys.executable, "-m", "sonar_jax.cli", "embed", "--model", str(ENCODER), "--input",
            str(folder), "--output", str(out), "--shard-rows", "350", "--quiet", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The sample's train split (14 x 700 rows, 28 shards of 350) embedded in one go."""
    root = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(SAMPLE / "train", root / "train")
    _embed(root / "train", root / "out", shard_rows=350)
    return root / "train", root / "out"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_run_resumes_to_the_same_bytes(tmp_path, uninterrupted, sig):
    """A run is killed once two shards are recorded; rerunning the same command completes it,
    and the manifest and shards equal those of an uninterrupted run."""
    folder, whole = uninterrupted
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    process = subprocess.Popen(_cli_embed(folder, out), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while len(list((out / "shards").glob("*.json"))) < 2 and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(sig)
    log = process.communicate(timeout=60)[0].decode(errors="replace")
    assert process.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), log
    done = len(list((out / "shards").glob("*.json")))
    assert 2 <= done < 28 and not (out / shards.MANIFEST_FILE).exists(), log
    if sig == signal.SIGTERM:
        assert "finished shards are kept: rerun the same command to resume" in log
        assert not list((out / "shards").glob("*.partial"))
    assert cli.main(_cli_embed(folder, out)[3:]) == 0
    assert (out / shards.MANIFEST_FILE).read_bytes() == (whole / shards.MANIFEST_FILE).read_bytes()
    names = sorted(p.name for p in (whole / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == names  # no partial file left
    for name in names:
        assert (out / "shards" / name).read_bytes() == (whole / "shards" / name).read_bytes()
    manifest = json.loads((out / shards.MANIFEST_FILE).read_text())
    assert [s["rows"] for s in manifest["shards"]] == [[i * 350, i * 350 + 350]
                                                        for i in range(28)]
