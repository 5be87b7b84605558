"""Audio front end of the SONAR speech encoders: decoding, resampling and Kaldi log-mel fbank.

`speech_features` produces exactly what the reference speech pipelines feed the speech encoder
(fairseq2's `WaveformToFbankConverter(num_mel_bins=80, waveform_scale=2**15, standardize=True)`,
itself kaldi-native-fbank with Kaldi's defaults): the waveform scaled to the int16 range, 25 ms
Povey-windowed frames every 10 ms (snip edges), per-frame DC removal, pre-emphasis 0.97, the power
spectrum of a 512-point FFT, 80 HTK-mel bins from 20 Hz to Nyquist, log floored at FLT_EPSILON, no
dither; then each mel bin standardised over the utterance.

    feats = speech_features("utterance.wav")          # np.ndarray [frames, 80]
    feats = speech_features(waveform, sample_rate=8000)

`fbank` and `standardize` are pure jnp, so they can run inside the caller's jitted code. Decoding
and resampling need the `audio` extra (librosa, soundfile): `pip install "sonar_jax[audio]"`.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80

FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
FFT_SIZE = 512  # frame length rounded up to a power of two, as Kaldi does
WAVEFORM_SCALE = 2.0**15  # the reference computes fbank on int16-range samples
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
# Standardisation divides by max(std, STD_FLOOR). The reference has no floor and turns silence,
# constant audio and single-frame clips into NaN; real speech has per-bin stds of order 1 (log-mel
# units), far above this floor, while fp32 rounding noise on constant bins stays far below it.
STD_FLOOR = 1e-3

_FLT_EPSILON = float(np.finfo(np.float32).eps)

AudioInput = Union[str, os.PathLike, np.ndarray, jax.Array]


class AudioDecodeError(ValueError):
    """An audio file exists but cannot be decoded."""


def _audio_libs():
    """librosa and soundfile, imported on demand so the text-only install does not need them."""
    try:
        import librosa
        import soundfile
    except ImportError as e:
        raise ImportError(
            f"Audio decoding and resampling need librosa and soundfile ({e}); "
            'install them with `pip install "sonar_jax[audio]"`.'
        ) from e
    return librosa, soundfile


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """`waveform` [T] float32 at `orig_sr` resampled to `target_sr` (librosa's default soxr_hq)."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if orig_sr == target_sr:
        return waveform
    librosa, _ = _audio_libs()
    out = librosa.resample(waveform, orig_sr=orig_sr, target_sr=target_sr)
    return np.asarray(out, dtype=np.float32)


def load_audio(path: Union[str, os.PathLike], *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file (any format libsndfile reads: wav, flac, ogg, mp3, ...) to mono float32.

    Returns [T] float32, integer PCM scaled to [-1, 1), at `sample_rate`. Only the first channel is
    kept, with a warning when the file has more. Other rates are resampled with librosa (soxr); the
    reference never resamples (it computes fbank at the first rate it meets and refuses any later
    different one). It also mishandles multi-channel files (fbank of the interleaved samples), so
    for those our features intentionally differ from it.
    """
    _, soundfile = _audio_libs()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Audio file not found: {path}")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as e:  # LibsndfileError; TypeError: headerless RAW
        raise AudioDecodeError(f"Cannot decode audio file {path}: {e}") from e
    if data.shape[1] > 1:
        warnings.warn(
            f"{path} has {data.shape[1]} channels; using only the first one.", stacklevel=2
        )
    if rate != sample_rate and rate not in _RESAMPLED_RATES:
        _RESAMPLED_RATES.add(rate)
        warnings.warn(f"{path} is sampled at {rate} Hz; it is resampled to {sample_rate} Hz "
                      f"(the encoder's rate), as is every later {rate} Hz file", stacklevel=2)
    return resample(np.ascontiguousarray(data[:, 0]), rate, sample_rate)


# Sample rates already reported as resampled (once per rate, not once per file).
_RESAMPLED_RATES: set[int] = set()


def num_frames(num_samples):
    """Frames Kaldi cuts from `num_samples` 16 kHz samples with snip_edges (0 under 400 samples).

    Elementwise: a Python int gives an int, a numpy or jax array (e.g. traced per-row counts in
    the training step) an array of the same shape.
    """
    return (num_samples >= FRAME_LENGTH) * (1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT)


def _mel_scale(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(freq / 700.0)


@functools.lru_cache(maxsize=1)
def _constants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Povey window [400], the real DFT [400, 2 * 256] and Kaldi's mel filterbank [256, 80].

    The DFT is a matrix (cos | sin columns) rather than an FFT: in fp32 it follows the reference
    closer in bins 100+ dB below a frame's peak (on a chirp, max error 5e-4 vs 5e-3 with jnp.fft,
    eagerly), and it is the same matmul on every backend. Zero-padding to FFT_SIZE only sets the
    frequencies evaluated.
    Kaldi places NUM_MEL_BINS + 2 equally spaced points on the mel scale between LOW_FREQ and
    Nyquist and weights FFT bins 0..255 by the triangles between them; the Nyquist bin (256) gets
    no weight, so it is not computed.
    """
    i = np.arange(FRAME_LENGTH, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * i / (FRAME_LENGTH - 1))) ** 0.85
    angle = 2.0 * np.pi * np.outer(i, np.arange(FFT_SIZE // 2)) / FFT_SIZE
    dft = np.concatenate([np.cos(angle), np.sin(angle)], axis=1)

    mel_low, mel_high = _mel_scale(np.float64(LOW_FREQ)), _mel_scale(np.float64(SAMPLE_RATE / 2))
    delta = (mel_high - mel_low) / (NUM_MEL_BINS + 1)
    left = mel_low + delta * np.arange(NUM_MEL_BINS)[None, :]
    center, right = left + delta, left + 2.0 * delta
    mel = _mel_scale(np.arange(FFT_SIZE // 2) * (SAMPLE_RATE / FFT_SIZE))[:, None]
    rising, falling = (mel - left) / (center - left), (right - mel) / (right - center)
    weights = np.where((mel > left) & (mel < right), np.where(mel <= center, rising, falling), 0.0)
    return window.astype(np.float32), dft.astype(np.float32), weights.astype(np.float32)


def _sequential_sum(frames: jax.Array) -> jax.Array:
    """Row sums [n] accumulated left to right in fp32, as Kaldi computes a frame's DC offset.

    The rounding of that mean leaves a DC residue that shows in the lowest mel bins of frames with
    little low-frequency energy; summing in the reference's order keeps those bins on its values
    (on a chirp, max error 5e-4 instead of 2.6e-3 with jnp.mean).
    """
    total, _ = jax.lax.scan(lambda acc, col: (acc + col, None),
                            jnp.zeros(frames.shape[:1], frames.dtype), frames.T)
    return total


def _frames(waveform) -> tuple[jax.Array, jax.Array]:
    """DC-free int16-scale frames [n, 400] and PREEMPHASIS times each sample's predecessor."""
    x = jnp.asarray(waveform, dtype=jnp.float32)
    if x.ndim != 1:
        raise ValueError(f"fbank expects a mono waveform [T]; got shape {x.shape}")
    n = num_frames(x.shape[0])
    idx = np.arange(n)[:, None] * FRAME_SHIFT + np.arange(FRAME_LENGTH)[None, :]
    frames = x[idx] * WAVEFORM_SCALE
    frames = frames - (_sequential_sum(frames) / FRAME_LENGTH)[:, None]
    previous = jnp.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # Kaldi: x[-1] := x[0]
    return frames, PREEMPHASIS * previous


def _log_mel(frames: jax.Array, scaled_previous: jax.Array) -> jax.Array:
    """Pre-emphasis, Povey window, power spectrum, mel filterbank and floored log."""
    window, dft, mel_weights = _constants()
    frames = (frames - scaled_previous) * window
    spectrum = jnp.dot(frames, dft, precision=jax.lax.Precision.HIGHEST)  # [n, 2 * 256]
    power = spectrum[:, : FFT_SIZE // 2] ** 2 + spectrum[:, FFT_SIZE // 2 :] ** 2
    mel = jnp.dot(power, mel_weights, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, _FLT_EPSILON))


def fbank(waveform) -> jax.Array:
    """Kaldi log-mel filterbank [num_frames(T), 80] float32 of a 16 kHz waveform [T] in [-1, 1].

    Shapes are static in T, so it jits (one compilation per length). Fewer than 400 samples give
    zero frames, as in the reference. Inside one jitted computation XLA fuses the pre-emphasis
    product into an FMA (one rounding where Kaldi has two); the sample differences that follow
    cancel most of the low frequencies, so quiet low bins then move by up to ~1e-3 (log units)
    from the reference, versus ~2e-4 eagerly. `speech_features` keeps the two roundings.
    """
    return _log_mel(*_frames(waveform))


def standardize(features, num_valid=None) -> jax.Array:
    """Per-utterance, per-bin (x - mean) / std over frames [frames, bins], with the unbiased std.

    With `num_valid` (an int or traced scalar) only the first `num_valid` frames are the utterance,
    so a padded array standardises under one compilation; later rows come out meaningless.
    Deviation from the reference: std is floored at STD_FLOOR (and one frame counts as std 0), so
    silent, constant or one-frame audio gives finite values near 0 instead of NaN/Inf.
    """
    f = jnp.asarray(features, dtype=jnp.float32)
    n = f.shape[0] if num_valid is None else num_valid
    valid = (jnp.arange(f.shape[0]) < n)[:, None]
    mean = jnp.sum(jnp.where(valid, f, 0.0), axis=0, keepdims=True) / jnp.maximum(n, 1)
    centered = f - mean
    var = jnp.sum(jnp.where(valid, centered**2, 0.0), axis=0, keepdims=True) / jnp.maximum(n - 1, 1)
    return centered / jnp.maximum(jnp.sqrt(var), STD_FLOOR)


# Two compiled stages, so that the pre-emphasis product is rounded before it is subtracted (an
# output of the first stage), as in Kaldi, instead of being fused into an FMA.
_jit_frames = jax.jit(_frames)


@jax.jit
def _standardized_log_mel(frames, scaled_previous, num_valid):
    return standardize(_log_mel(frames, scaled_previous), num_valid)


def _bucket_frames(n: int) -> int:
    """Frames to compute for an n-frame clip: a power of two (at least 64), so that clips of any
    length share a handful of compilations instead of one each."""
    return max(64, 1 << max(n - 1, 0).bit_length())


def _as_waveform(audio, sample_rate) -> np.ndarray:
    """A mono float32 16 kHz waveform [T] from a file path or an array at `sample_rate`."""
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError(
                "sample_rate is only for waveform arrays; an audio file carries its own rate"
            )
        return load_audio(audio)
    wave = np.asarray(audio)
    if wave.ndim == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.ndim != 1:
        raise ValueError(
            f"Expected a mono waveform [T] (or [1, T] / [T, 1]); got shape {wave.shape}. "
            "Select one channel first, e.g. audio[0] for a [channels, T] array."
        )
    if np.issubdtype(wave.dtype, np.signedinteger):
        wave = wave / float(np.iinfo(wave.dtype).max + 1)  # integer PCM -> [-1, 1)
    elif not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"Expected float or signed integer PCM samples; got dtype {wave.dtype}")
    rate = SAMPLE_RATE if sample_rate is None else sample_rate
    return resample(wave.astype(np.float32), rate, SAMPLE_RATE)


def speech_features(audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
    """Standardised fbank [frames, 80] float32: the speech encoder's input, as in the reference.

    `audio` is a file path (decoded by `load_audio`) or a mono waveform in [-1, 1] (signed integer
    PCM arrays are scaled) at `sample_rate` Hz, default 16 kHz; other rates are resampled. Clips
    shorter than 400 samples (25 ms) give zero frames, as in the reference.
    """
    wave = _as_waveform(audio, sample_rate)
    n = num_frames(wave.size)
    padded = np.zeros(FRAME_LENGTH + FRAME_SHIFT * (_bucket_frames(n) - 1), np.float32)
    used = min(wave.size, padded.size)  # samples past the last full frame are never read
    padded[:used] = wave[:used]
    return np.asarray(_standardized_log_mel(*_jit_frames(padded), n))[:n]


def batch_features(waveforms: jax.Array, num_samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Standardised fbank [B, F, 80] and frame counts [B] of right-padded 16 kHz waveforms
    [B, S] with `num_samples` [B] real samples each (F = num_frames(S)); pure jnp, for the
    training step, where features are computed on the accelerator from host-decoded audio.
    Frames past a row's count come out meaningless; pass the counts on as lengths."""
    lengths = num_frames(jnp.asarray(num_samples, jnp.int32))
    feats = jax.vmap(lambda w: _log_mel(*_frames(w)))(waveforms)
    return jax.vmap(standardize)(feats, lengths), lengths


def spec_augment(features: jax.Array, lengths: jax.Array, rng: jax.Array, *, time_masks: int,
                 time_width: int, freq_masks: int, freq_width: int) -> jax.Array:
    """SpecAugment (Park et al. 2019) without time warping: per row, `time_masks` spans of
    0..time_width frames inside the row's length and `freq_masks` bands of 0..freq_width mel
    bins, each set to 0 (the standardised mean). features [B, T, C], lengths [B]."""
    batch, frames, bins = features.shape
    keep = jnp.ones(features.shape, bool)

    def spans(key, count, width, extent):
        """[B, count] starts and ends of masks of 0..width within [0, extent[b])."""
        width_key, start_key = jax.random.split(key)
        widths = jax.random.randint(width_key, (batch, count), 0, width + 1)
        widths = jnp.minimum(widths, extent[:, None])
        starts = jax.random.uniform(start_key, (batch, count)) * (extent[:, None] - widths + 1)
        starts = jnp.floor(starts).astype(jnp.int32)
        return starts, starts + widths

    time_key, freq_key = jax.random.split(rng)
    if time_masks:
        start, end = spans(time_key, time_masks, time_width, lengths.astype(jnp.int32))
        t = jnp.arange(frames)[None, None, :]
        hit = jnp.any((t >= start[..., None]) & (t < end[..., None]), axis=1)  # [B, T]
        keep &= ~hit[:, :, None]
    if freq_masks:
        start, end = spans(freq_key, freq_masks, freq_width, jnp.full((batch,), bins, jnp.int32))
        f = jnp.arange(bins)[None, None, :]
        hit = jnp.any((f >= start[..., None]) & (f < end[..., None]), axis=1)  # [B, C]
        keep &= ~hit[:, None, :]
    return jnp.where(keep, features, 0.0)
