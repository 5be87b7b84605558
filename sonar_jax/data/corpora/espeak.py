"""Synthetic speech for a FLORES-layout corpus with the espeak-ng synthesizer.

Real recordings exist for few languages (see fillets.py); espeak-ng reads about a hundred, fast
(hundreds of times real time), so any text corpus here can get speech for speech-encoder
distillation. Voice variant, speed and pitch vary per clip, chosen by a hash of (language,
sentence) so a rebuild gives the same clips.

Output: the source corpus's text splits (copied, so `line` refers to files next to the
manifests), `speech/<lang>.<split>.tsv` (header `audio, transcription, lang, line, voice`) and
22.05 kHz mono WAV clips under `speech/audio/` (the audio loader resamples to 16 kHz).
Licence: the text keeps its corpus's licence; espeak-ng is GPL-3+, its output is not restricted.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import shutil
import subprocess
from typing import Mapping, Sequence

import tqdm

from sonar_jax.data.corpora.layout import SPLITS

# NLLB code -> espeak-ng voice, for the languages espeak-ng 1.51 reads correctly.
VOICES = {
    "eng_Latn": "en-us", "deu_Latn": "de", "fra_Latn": "fr-fr", "spa_Latn": "es",
    "ita_Latn": "it", "por_Latn": "pt", "rus_Cyrl": "ru", "ukr_Cyrl": "uk", "pol_Latn": "pl",
    "ell_Grek": "el", "tur_Latn": "tr", "ind_Latn": "id", "eus_Latn": "eu", "ces_Latn": "cs",
    "nld_Latn": "nl", "swe_Latn": "sv", "bul_Cyrl": "bg", "arb_Arab": "ar", "hin_Deva": "hi",
    "ben_Beng": "bn", "tam_Taml": "ta", "kat_Geor": "ka", "kaz_Cyrl": "kk", "amh_Ethi": "am",
    "kor_Hang": "ko", "vie_Latn": "vi",
}
# Readable by espeak-ng 1.51 only as noise: Chinese tone digits are read as English numbers,
# Japanese kanji as "Chinese letter"; Thai and Hebrew come out badly.
UNSUPPORTED = ("zho_Hans", "zho_Hant", "jpn_Jpan", "tha_Thai", "heb_Hebr")
_VARIANTS = ("", "+m3", "+f2", "+f4", "+m7", "+klatt2")


def check_voices(langs: Sequence[str]) -> None:
    """Fail before any work when a language has no usable voice."""
    for lang in langs:
        if lang not in VOICES:
            why = ("espeak-ng 1.51 misreads it" if lang in UNSUPPORTED
                   else "no espeak-ng voice is mapped for it")
            raise KeyError(f"cannot synthesize {lang}: {why}; voices: {', '.join(sorted(VOICES))}")


def voice_for(lang: str, text: str) -> list[str]:
    """espeak-ng arguments (voice+variant, speed, pitch) for one clip, fixed by a hash."""
    check_voices([lang])
    digest = hashlib.sha256(f"{lang}\x00{text}".encode("utf-8")).digest()
    return ["-v", VOICES[lang] + _VARIANTS[digest[0] % len(_VARIANTS)],
            "-s", str(150 + digest[1] % 60), "-p", str(35 + digest[2] % 30)]


def synthesize(text: str, voice: list[str], path: pathlib.Path) -> None:
    """One WAV clip of `text` (read from stdin, so text starting with '-' is not an option)."""
    result = subprocess.run(["espeak-ng", *voice, "-b", "1", "-w", str(path)], input=text,
                            capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        raise RuntimeError(f"espeak-ng {' '.join(voice)} failed on {text!r}: {result.stderr}")


def build(out_dir: str | pathlib.Path, cache_dir: str | pathlib.Path | None = None,
          langs: Sequence[str] | None = None, limits: Mapping[str, int] | None = None, *,
          source: str | pathlib.Path, workers: int | None = None) -> dict:
    """Speak the first `limits[split]` lines (all when not limited) of each split of `source`
    in each language of `langs` (default: every source language espeak-ng reads).
    `cache_dir` is unused: espeak-ng runs locally."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install --no-install-recommends "
                           "espeak-ng")
    source, out, limits = pathlib.Path(source), pathlib.Path(out_dir), dict(limits or {})
    splits = [s for s in SPLITS if (source / s).is_dir() and limits.get(s) != 0]
    if not splits:
        raise FileNotFoundError(f"{source} has no {'/'.join(SPLITS)} folder (FLORES layout)")
    available = sorted({p.name.split(".")[0] for s in splits for p in (source / s).glob(f"*.{s}")})
    langs = list(langs) if langs else [lang for lang in available if lang in VOICES]
    absent = [lang for lang in langs if lang not in available]
    if absent:
        raise ValueError(f"{source} has no text for {absent}; it has {available}")
    check_voices(langs)
    jobs, counts = [], {}
    for split in splits:
        shutil.copytree(source / split, out / split, dirs_exist_ok=True)
        for lang in langs:
            lines = (source / split / f"{lang}.{split}").read_text(encoding="utf-8").splitlines()
            lines = lines[:limits.get(split, len(lines))]
            (out / "speech" / "audio" / lang / split).mkdir(parents=True, exist_ok=True)
            table = ["audio\ttranscription\tlang\tline\tvoice"]
            for line, text in enumerate(lines):
                voice = voice_for(lang, text)
                relative = f"audio/{lang}/{split}/{line}.wav"
                jobs.append((text, voice, out / "speech" / relative))
                table.append(f"{relative}\t{text}\t{lang}\t{line}\t{' '.join(voice)}")
            (out / "speech" / f"{lang}.{split}.tsv").write_text("\n".join(table) + "\n",
                                                                encoding="utf-8")
            counts.setdefault(lang, {})[split] = len(lines)
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for _ in tqdm.tqdm(pool.map(lambda job: synthesize(*job), jobs), total=len(jobs),
                           desc="espeak-ng", unit="clip"):
            pass
    for name in ("NOTICE.md", "licenses"):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
        elif (source / name).is_dir():
            shutil.copytree(source / name, out / name, dirs_exist_ok=True)
    return {"source": str(source), "langs": langs, "clips": counts}
