"""Reading XLA's optimized HLO text (`jax.jit(f).lower(...).compile().as_text()`): for the tests
that check the structure of compiled programs (which instructions a while loop's body holds,
their shapes and operand types, dot operand dtypes) and for `benchmarks.gpu_programs` (the
kernels a GPU program launches and the bytes they move).

Only the text format is parsed (computations, instructions, their shapes, opcodes and the
computations they call); that is all the structural tests need, and it is stable across
backends.
"""

from __future__ import annotations

import dataclasses
import math
import re

_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*?)\)(, .*)?$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")
_ARRAY = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")
_PRODUCTS = ("dot", "convolution")  # matrix products (TPUs write some dots as convolutions)
_OPERAND = re.compile(r"%([\w.\-]+)")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
          "u32": 4, "f64": 8, "s64": 8, "u64": 8}
# Instructions that compute nothing: views, tuples, the program's inputs and constants (in an
# entry computation, the ones that launch no kernel).
PLUMBING = frozenset({"parameter", "constant", "bitcast", "get-tuple-element", "tuple"})


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in a shape ("f32[4,8]{1,0}" or a tuple of them)."""
    return [(dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(shape)]


def array_bytes(shape: str) -> int:
    """Bytes of every array in a shape (a tuple counts all its elements)."""
    return sum(math.prod(dims) * _BYTES.get(dtype, 0) for dtype, dims in arrays(shape))


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # e.g. "f32[32,8,66]{2,1,0}" or a tuple "(f32[...], s32[])"
    opcode: str
    operands: str
    attributes: str

    def arrays(self) -> list[tuple[str, tuple[int, ...]]]:
        """(dtype, dims) of every array in the result shape."""
        return arrays(self.shape)

    def operand_names(self) -> list[str]:
        return _OPERAND.findall(self.operands)

    def called(self) -> list[str]:
        return _CALLED.findall(self.attributes)


def parse(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation name: instructions}, entry computation name)."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _COMPUTATION.match(line.strip())
        if header:
            current = header.group(2)
            computations[current] = []
            if header.group(1):
                entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if current is not None and match:
            _, name, shape, opcode, operands, attributes = match.groups()
            computations[current].append(Instruction(name, shape, opcode, operands,
                                                     attributes or ""))
    return computations, entry


def while_bodies(text: str) -> list[str]:
    """Names of the body computations of every while loop."""
    computations, _ = parse(text)
    return [re.search(r"body=%?([\w.\-]+)", i.attributes).group(1)
            for instrs in computations.values() for i in instrs if i.opcode == "while"]


def reachable(computations: dict[str, list[Instruction]], root: str) -> list[str]:
    """`root` and every computation it calls, transitively (fusions, reductions, nested loops)."""
    seen, stack = [], [root]
    while stack:
        name = stack.pop()
        if name in seen or name not in computations:
            continue
        seen.append(name)
        for instruction in computations[name]:
            stack.extend(instruction.called())
    return seen


def dots(text: str) -> list[tuple[Instruction, list[str]]]:
    """Every matrix product (dot, or convolution as TPUs write them) with its operands' shapes."""
    computations, _ = parse(text)
    out = []
    for instructions in computations.values():
        shapes = {i.name: i.shape for i in instructions}
        for i in instructions:
            if i.opcode in _PRODUCTS:
                out.append((i, [shapes.get(name, "") for name in i.operand_names()]))
    return out


def library_dots(text: str, kind: str) -> tuple[int, int]:
    """(products inside fusions of backend kind `kind`, e.g. "__onednn_fusion", all products)."""
    computations, _ = parse(text)
    inside = set()
    for instructions in computations.values():
        for i in instructions:
            if i.opcode == "fusion" and f'"kind":"{kind}"' in i.attributes:
                for name in i.called():
                    inside.update(reachable(computations, name))
    products = [name for name, instructions in computations.items()
                for i in instructions if i.opcode in _PRODUCTS]
    return sum(name in inside for name in products), len(products)


def kernels(text: str, computation: str | None = None) -> dict[str, tuple[int, int]]:
    """{kind: (count, bytes)} of the kernels of `computation` (default: the entry; a while
    body gives one iteration's): fusions by their name without the numeric suffix (e.g.
    `gemm_fusion_dot`, `loop_add_fusion`), custom calls by target, other instructions by opcode.
    Bytes are the kernel's operands and results as whole arrays (an upper bound for a kernel
    that reads part of an operand, such as a slice)."""
    computations, entry = parse(text)
    body = computations[computation or entry]
    shapes = {i.name: i.shape for i in body}
    out: dict[str, tuple[int, int]] = {}
    for i in body:
        if i.opcode in PLUMBING:
            continue
        target = re.search(r'custom_call_target="([^"]+)"', i.attributes)
        kind = (re.sub(r"\.\d+$", "", i.name) if i.opcode == "fusion"
                else target.group(1) if target else i.opcode)
        moved = array_bytes(i.shape) + sum(array_bytes(shapes.get(name, ""))
                                           for name in i.operand_names())
        count, total = out.get(kind, (0, 0))
        out[kind] = (count + 1, total + moved)
    return out
