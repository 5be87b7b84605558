"""Reading XLA's optimized HLO text (`jax.jit(f).lower(...).compile().as_text()`) in tests that
check the structure of compiled programs: which instructions a while loop's body holds, their
shapes and operand types, dot operand dtypes.

Only the text format is parsed (computations, instructions, their shapes, opcodes and the
computations they call); that is all the structural tests need, and it is stable across
backends.
"""

from __future__ import annotations

import dataclasses
import re

_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*?)\)(, .*)?$")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")
_ARRAY = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")
_PRODUCTS = ("dot", "convolution")  # matrix products (TPUs write some dots as convolutions)


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # e.g. "f32[32,8,66]{2,1,0}" or a tuple "(f32[...], s32[])"
    opcode: str
    operands: str
    attributes: str

    def arrays(self) -> list[tuple[str, tuple[int, ...]]]:
        """(dtype, dims) of every array in the result shape."""
        return [(dtype, tuple(int(d) for d in dims.split(",") if d))
                for dtype, dims in _ARRAY.findall(self.shape)]

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
                operands = re.findall(r"%([\w.\-]+)", i.operands)
                out.append((i, [shapes.get(name, "") for name in operands]))
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
