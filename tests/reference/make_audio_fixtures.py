#!/usr/bin/env python3
"""Build the audio front-end parity fixtures (Kaldi fbank, standardisation) with the official SONAR.

Runs ONLY in the reference environment (torch 2.8.0, fairseq2 0.5.2, sonar-space 0.5.0; see
tests/fixtures/audio/README.md). Needs the `espeak-ng` program and the LibriVox clip that Debian's
`pocketsphinx-testdata` package installs (under /usr/share/pocketsphinx/test/data/librivox/)::

    REFENV/bin/python tests/reference/make_audio_fixtures.py \
        --librivox-wav LIBRIVOX_DIR/sense_and_sensibility_01_austen_64kb-0880.wav \
        --out tests/fixtures/audio

The features come from the reference's own objects: the `convert_to_fbank` converter and the
`_decode_audio` method that `sonar.inference_pipelines.speech.SpeechModelPipelineInterface` builds
(fairseq2's `AudioDecoder` for files, the (C, T) tensor path otherwise). The un-standardised fbank
comes from a second `WaveformToFbankConverter` with the same settings and `standardize=False`.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional
from fairseq2.data.audio import WaveformToFbankConverter
from fairseq2.device import CPU
from sonar.inference_pipelines.speech import SpeechModelPipelineInterface

SAMPLE_RATE = 16000
SPEECH_EN_CROP = (2400, 18400)  # 1.0 s of "he was not an ill disposed young man"
GERMAN_TEXT = "Guten Morgen, wie geht es dir?"
GERMAN_SECONDS = 1.0


class _ReferenceFrontEnd(SpeechModelPipelineInterface):
    """SONAR's speech pipeline base class without a model: its decoder and fbank converter only."""

    def __init__(self) -> None:
        self.device = CPU
        super().__init__(torch.float32)
        self.raw_fbank = WaveformToFbankConverter(
            num_mel_bins=80, waveform_scale=2**15, channel_last=True, standardize=False,
            device=CPU, dtype=torch.float32,
        )

    def features(self, audio: str | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(fbank, standardised fbank) of a file path or a [1, T] float tensor."""
        decoded = self._decode_audio(audio)
        fbank = self.raw_fbank(dict(decoded))["fbank"].numpy()
        feats = self.convert_to_fbank(dict(decoded))["fbank"].numpy()
        return fbank, feats


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _german_speech() -> np.ndarray:
    """espeak-ng German synthesis (22.05 kHz) resampled to 16 kHz int16, first GERMAN_SECONDS."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "de.wav"
        subprocess.run(["espeak-ng", "-v", "de", "-w", str(path), GERMAN_TEXT], check=True)
        wave, rate = soundfile.read(path, dtype="float32")
    wave16 = torchaudio.functional.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return _to_int16(wave16[: int(GERMAN_SECONDS * SAMPLE_RATE)])


def _chirp_noise(rng: np.random.Generator) -> np.ndarray:
    """0.5 s linear chirp 100 Hz -> 7.5 kHz plus white noise, float32."""
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    phase = 2 * np.pi * (100.0 * t + 0.5 * (7400.0 / t[-1]) * t**2)
    return (0.5 * np.sin(phase) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--librivox-wav", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240)
    ref = _ReferenceFrontEnd()

    source, rate = soundfile.read(args.librivox_wav, dtype="int16")
    assert rate == SAMPLE_RATE and source.ndim == 1, (rate, source.shape)
    wav_path = args.out / "speech_en.wav"
    soundfile.write(wav_path, source[slice(*SPEECH_EN_CROP)], SAMPLE_RATE, subtype="PCM_16")

    german = _german_speech()
    waveforms = {
        "speech_de": german,  # int16 PCM; the pipeline input is waveform / 32768
        "chirp_noise": _chirp_noise(rng),
        "odd_length": german[3001:3001 + 4321],  # 25 frames plus a partial one
        "one_frame": (0.1 * rng.standard_normal(450)).astype(np.float32),
        "too_short": (0.1 * rng.standard_normal(399)).astype(np.float32),
        "silence": np.zeros(1600, np.float32),
    }
    arrays: dict[str, np.ndarray] = {}
    fbank, feats = ref.features(str(wav_path))
    arrays.update({"speech_en/fbank": fbank, "speech_en/features": feats})
    for name, wave in waveforms.items():
        as_float = wave.astype(np.float32) / 32768.0 if wave.dtype == np.int16 else wave
        fbank, feats = ref.features(torch.from_numpy(as_float)[None, :])
        arrays.update({f"{name}/waveform": wave, f"{name}/fbank": fbank, f"{name}/features": feats})
    np.savez_compressed(args.out / "reference_features.npz", **arrays)
    for key, value in arrays.items():
        print(f"{key:24s} {str(value.shape):14s} {value.dtype}")


if __name__ == "__main__":
    main()
