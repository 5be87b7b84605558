"""Speech manifests: TSV files with a header row, as the corpus builders write them
(`audio, transcription, lang, ...`). `audio` is relative to the manifest's folder or absolute;
`text`, `raw_text` and `tgt_text` are accepted for `transcription`; `lang` (an NLLB code) may be
left out when the data config's `lang` gives it. An optional `duration` (seconds) or `n_samples`
(samples at 16 kHz) column saves reading each file's header.
"""

from __future__ import annotations

import math
import os
import pathlib
import warnings
from typing import NamedTuple, Sequence

from sonar_jax import audio

TEXT_COLUMNS = ("transcription", "text", "raw_text", "tgt_text")  # first present wins


class ManifestRow(NamedTuple):
    audio: str  # path, joined to the manifest's folder
    text: str
    lang: str
    num_samples: int | None  # at 16 kHz, from a duration or n_samples column
    where: str  # "manifest, line N", for error messages


def read_manifest(path: str | os.PathLike, lang: str = "") -> list[ManifestRow]:
    """The rows of one manifest, audio paths joined to its folder; files are not opened."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"speech manifest {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    text_column = next((name for name in TEXT_COLUMNS if name in header), None)
    if "audio" not in header or text_column is None:
        raise ValueError(f"{path}, line 1: the header must name an `audio` column and one of "
                         f"{', '.join(TEXT_COLUMNS)}; got {header}")
    if "lang" not in header and not lang:
        raise ValueError(f"{path} has no lang column; set the data config's lang (an NLLB code "
                         "such as nld_Latn) or add the column")
    column = {name: header.index(name) for name in header}
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        where = f"{path}, line {number}"
        cells = line.split("\t")
        if len(cells) != len(header):
            raise ValueError(f"{where}: {len(cells)} tab-separated columns, expected "
                             f"{len(header)} as in the header")
        row_lang = cells[column["lang"]] if "lang" in column else lang
        if not row_lang or any(ch.isspace() for ch in row_lang):
            raise ValueError(f"{where}: {row_lang!r} is not a language code (e.g. 'nld_Latn')")
        rows.append(ManifestRow(str(path.parent / cells[column["audio"]]),
                                cells[column[text_column]], row_lang,
                                _declared_samples(cells, column, where), where))
    return rows


def _declared_samples(cells: list[str], column: dict[str, int], where: str) -> int | None:
    """Samples at 16 kHz from a duration or n_samples column, None without either."""
    try:
        if "duration" in column:
            return round(float(cells[column["duration"]]) * audio.SAMPLE_RATE)
        if "n_samples" in column:
            return int(cells[column["n_samples"]])
    except ValueError:
        raise ValueError(f"{where}: duration/n_samples is not a number") from None
    return None


def read_manifests(paths: Sequence[str | os.PathLike], lang: str = "") -> list[ManifestRow]:
    """The rows of several manifests, in order: row i is the teacher cache's row i."""
    if not paths:
        raise ValueError("no speech manifest given (data config `manifest`)")
    return [row for path in paths for row in read_manifest(path, lang)]


def header_samples(row: ManifestRow) -> int:
    """A clip's length at 16 kHz from its file header, as load_audio will resample it."""
    import soundfile  # the audio extra, as in sonar_jax.audio
    try:
        info = soundfile.info(row.audio)
        return math.ceil(info.frames * audio.SAMPLE_RATE / info.samplerate)  # librosa's length
    except (RuntimeError, TypeError):
        pass
    try:
        import librosa
        with warnings.catch_warnings():  # librosa warns that soundfile failed: we know
            warnings.simplefilter("ignore")
            return round(librosa.get_duration(path=row.audio) * audio.SAMPLE_RATE)
    except Exception as error:  # audioread raises its own types; all mean "no header"
        raise ValueError(f"{row.where}: cannot read the audio header of {row.audio} ({error}); "
                         "fix or remove the file, or give a duration column") from None
