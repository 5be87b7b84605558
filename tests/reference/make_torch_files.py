"""Write the small torch.save fixtures read by tests/test_torch_pickle.py.

Runs in a scratch venv that has torch (and omegaconf, for a fairseq-style
config object); the tests themselves never import torch.  The expected values
are written by torch itself to ``expected.npz`` so the tests compare the
torch-free reader with what torch computed.

    TORCH_VENV/bin/python tests/reference/make_torch_files.py   # torch>=2.x, omegaconf
"""

import argparse
import collections
import pathlib

import numpy as np
import torch
from torch import nn

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "torch_files"


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Exact numpy copy; dtypes numpy lacks are widened losslessly."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        return t.float().numpy()
    if t.dtype == torch.uint16:
        return t.to(torch.int64).numpy()
    return t.numpy()


def basic() -> dict:
    """One tensor per dtype, plus views that share a storage."""
    g = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(2, 5, generator=g).half(),
        "bf16": torch.randn(3, 3, generator=g).bfloat16(),
        "f64": torch.randn(4, generator=g).double(),
        "i64": torch.arange(-3, 5, dtype=torch.int64).reshape(2, 4),
        "i32": torch.tensor([1, -2, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-7, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 5, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "u16": torch.tensor([1, 65535, 7]).to(torch.uint16),  # _rebuild_tensor_v3
        "f8": torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn),  # v3 too
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
        # Views of `base`: all share storage "base"'s key in the archive.
        "base": base,
        "base_t": base.t(),  # transposed: stride (1, 6)
        "base_slice": base[1:, 2:5],  # storage offset 8, stride (6, 1)
        "base_every_other": base[:, ::2],  # stride (6, 2)
        "base_row": base[3],  # offset 18, 1-D
        "expanded": torch.tensor([1.0, 2.0, 3.0]).expand(2, 3),  # stride (0, 1)
    }


def params() -> dict:
    """{"model": ...} with nn.Parameter leaves (_rebuild_parameter[_with_state]), plus the
    other globals torch's own weights_only loader accepts."""
    g = torch.Generator().manual_seed(1)
    with_state = nn.Parameter(torch.randn(2, 2, generator=g))
    with_state.note = "extra python state"  # -> _rebuild_parameter_with_state
    tagged = torch.arange(4, dtype=torch.int32)
    tagged.tag = "attr"  # a tensor with python attributes -> _rebuild_from_type_v2
    return {
        "model": {
            "enc.weight": nn.Parameter(torch.randn(3, 2, generator=g)),
            "enc.bias": nn.Parameter(torch.randn(3, generator=g), requires_grad=False),
            "dec.weight": with_state,
        },
        "step": 7,
        "extras": {
            "tagged": tagged,
            "device": torch.device("cuda", 0),
            "size": torch.Size([2, 3]),
            "bytes": b"\x00\xffabc",  # protocol 2 writes _codecs.encode(str, 'latin1')
            "set": {1, 2},
            "complex": 1 + 2j,
            "counter": collections.Counter("aab"),
        },
    }


def module_state() -> collections.OrderedDict:
    """A real nn.Module.state_dict(): an OrderedDict with a `_metadata` attribute."""
    torch.manual_seed(2)
    module = nn.Sequential(
        nn.Linear(4, 3), nn.LayerNorm(3), nn.BatchNorm1d(3), nn.Embedding(5, 2)
    )
    return module.state_dict()


def fairseq_like() -> dict:
    """A fairseq(1)-style training checkpoint: config objects + optimizer state."""
    from omegaconf import OmegaConf

    torch.manual_seed(3)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    args = argparse.Namespace(arch="toy", lr=[0.001], layers=2, fp16=True)
    cfg = OmegaConf.create({"model": {"_name": "toy", "layers": 2}, "lr": [0.001]})
    return {
        "args": args,
        "cfg": cfg,
        "model": model.state_dict(),
        "optimizer_history": [{"optimizer_name": "Adam", "num_updates": 1}],
        "last_optimizer_state": opt.state_dict(),
        "extra_state": {"best_loss": np.float64(1.5), "epoch": 1},
    }


def flatten(obj, prefix=""):
    """Dotted key -> tensor for nested dicts/lists, like the reader's iter_tensors."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}.{i}" if prefix else str(i))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, obj in [
        ("basic", basic()),
        ("params", params()),
        ("module_state", module_state()),
        ("fairseq_like", fairseq_like()),
    ]:
        torch.save(obj, OUT / f"{name}.pt")
        for key, t in flatten(obj):
            expected[f"{name}/{key}"] = to_numpy(t)
    torch.save({"w": torch.ones(2)}, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    np.savez(OUT / "expected.npz", **expected)
    print(f"torch {torch.__version__}: wrote {len(expected)} arrays to {OUT}")


if __name__ == "__main__":
    main()
