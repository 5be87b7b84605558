"""`build_corpus`: the one entry point the CLI (`sonar-jax data build`) calls."""

from __future__ import annotations

import json
import pathlib
import shutil
import warnings
from typing import Callable, Mapping, Sequence

from sonar_jax.data.corpora import espeak, fillets, firefox, libreoffice, lo_help

BUILDERS: dict[str, Callable[..., dict]] = {
    "libreoffice": libreoffice.build,
    "firefox": firefox.build,
    "fillets": fillets.build,
    "lo-help": lo_help.build,
    "espeak": espeak.build,
}


def build_corpus(name: str, out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path,
                 langs: Sequence[str] | None = None, *,
                 fractions: Mapping[str, float] | None = None,
                 limits: Mapping[str, int] | None = None, overwrite: bool = False,
                 **options) -> dict:
    """Build corpus `name` into `out_dir` (downloads are cached in `cache_dir`).

    `langs`: the source's locale codes, e.g. `pt-br` (espeak: NLLB codes; default: the
    builder's set); `fractions`: the share of rows per split (default dev 0.2, devtest 0.2,
    train 0.6); `limits`: at most this many rows per split, a stable subset (how the committed
    sample is cut). `options` go to the builder: `speech` (fillets: locales with recordings),
    `source` and `workers` (espeak). Returns the build summary, also saved as
    `out_dir/corpus.json`.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown corpus {name!r}; choose from {', '.join(sorted(BUILDERS))}")
    out = pathlib.Path(out_dir)
    if "source" in options:
        source = pathlib.Path(options["source"]).resolve()
        if out.resolve() in (source, *source.parents):
            raise ValueError(f"the output {out} must not hold the source corpus {source}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True "
                                  "(--overwrite) to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if fractions is not None:
        options["fractions"] = dict(fractions)
    summary = BUILDERS[name](out, cache_dir, langs, limits=limits, **options)
    summary = {"corpus": name, **summary}
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    return summary


# The committed sample (data/sample): every language of the two UI corpora, small enough to
# commit (about 3 MB) and to train and evaluate a small text model offline.
SAMPLE_LIMITS = {
    "libreoffice": {"dev": 200, "devtest": 200, "train": 700},
    "firefox": {"dev": 100, "devtest": 100, "train": 0},
}
# Its speech part (data/sample/speech, about 3 MB): Fish Fillets NG rows in English, Czech and
# Dutch with the Czech and Dutch voice-actor clips, and espeak-ng reading the same rows in
# SPEECH_SAMPLE_ESPEAK, for speech-encoder distillation offline. Clips are re-encoded as 16 kHz
# mono Ogg Opus at this libsndfile compression level (about 10 kbit/s, wideband; Vorbis at its
# lowest quality is 2.5x larger).
SPEECH_SAMPLE_LIMITS = {"dev": 50, "devtest": 0, "train": 150}
SPEECH_SAMPLE_ESPEAK = ("eng_Latn",)
SPEECH_SAMPLE_OPUS_LEVEL = 0.99


def compress_clips(speech_dir: str | pathlib.Path, level: float) -> None:
    """Re-encode every clip the manifests in `speech_dir` name as 16 kHz mono Ogg Opus (`.ogg`,
    what sonar_jax.audio.load_audio would decode them to), rewriting the manifests' paths."""
    import soundfile

    from sonar_jax import audio

    folder, done = pathlib.Path(speech_dir), set()
    for manifest in sorted(folder.glob("*.tsv")):
        header, *rows = manifest.read_text(encoding="utf-8").splitlines()
        column = header.split("\t").index("audio")
        lines = [header]
        for row in rows:
            cells = row.split("\t")
            clip = pathlib.PurePosixPath(cells[column])
            cells[column] = str(clip.with_suffix(".ogg"))
            if cells[column] not in done:
                with warnings.catch_warnings():  # stereo files: keeping channel 0 is the point
                    warnings.simplefilter("ignore")
                    wave = audio.load_audio(folder / clip)
                (folder / clip).unlink()
                soundfile.write(folder / cells[column], wave, audio.SAMPLE_RATE, format="OGG",
                                subtype="OPUS", compression_level=level)
                done.add(cells[column])
            lines.append("\t".join(cells))
        manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_speech_sample(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path
                        ) -> dict[str, dict]:
    """(Re)build the speech sample: `out_dir/fillets/` (text, real clips) and `out_dir/espeak/`
    (synthetic clips of the same rows; needs espeak-ng installed)."""
    out = pathlib.Path(out_dir)
    summaries = {
        "fillets": build_corpus("fillets", out / "fillets", cache_dir, fillets.SPEECH_LOCALES,
                                limits=SPEECH_SAMPLE_LIMITS, overwrite=True,
                                speech=fillets.SPEECH_LOCALES),
        "espeak": build_corpus("espeak", out / "espeak", cache_dir, list(SPEECH_SAMPLE_ESPEAK),
                               limits=SPEECH_SAMPLE_LIMITS, overwrite=True,
                               source=out / "fillets"),
    }
    for name in summaries:
        compress_clips(out / name / "speech", SPEECH_SAMPLE_OPUS_LEVEL)
    return summaries


def build_sample(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path) -> dict[str, dict]:
    """(Re)build the committed sample: `out_dir/<corpus>/` for each corpus of SAMPLE_LIMITS, and
    `out_dir/speech/` (build_speech_sample)."""
    text = {name: build_corpus(name, pathlib.Path(out_dir) / name, cache_dir, limits=limits,
                               overwrite=True)
            for name, limits in SAMPLE_LIMITS.items()}
    return {**text, "speech": build_speech_sample(pathlib.Path(out_dir) / "speech", cache_dir)}
