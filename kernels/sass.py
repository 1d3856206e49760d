"""Static instruction counts of a compiled kernel's steady-state loop, read from its SASS.

A decode kernel that reads a few bits per weight is bound by how many instructions each weight
costs as soon as that count exceeds what the memory system hides; this module measures it without
a GPU. :func:`disassemble` runs the ``cuobjdump`` bundled with Triton on a cubin; :func:`hot_loop`
finds the largest innermost loop (a backward branch and the instructions it jumps over) and
:func:`loop_mix` counts its instructions by opcode. Counts are static (one pass through the loop
body as compiled), not timings: predicated-off and dual-issued instructions count as one each.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-7T]\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?\s*([^;]*);")
_BRA_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # without modifiers: FFMA, LOP3, LDG, ...
    operands: str


@dataclass(frozen=True)
class Loop:
    start: int  # address of the first instruction of the body
    end: int  # address of the backward branch
    body: tuple[Instruction, ...]


def parse(sass: str) -> list[Instruction]:
    """Instructions of a ``cuobjdump -sass`` listing, in address order."""
    out = []
    for line in sass.splitlines():
        m = _LINE.search(line)
        if m:
            out.append(Instruction(int(m.group(1), 16), m.group(2), m.group(4).strip()))
    return out


def loops(instructions: list[Instruction]) -> list[Loop]:
    """Every backward branch as a loop (its body from the target to the branch), largest first."""
    found = []
    for ins in instructions:
        if ins.opcode != "BRA":
            continue
        target = _BRA_TARGET.search(ins.operands)
        if target is None:
            continue
        start = int(target.group(1), 16)
        if start < ins.address:
            body = tuple(i for i in instructions if start <= i.address <= ins.address)
            found.append(Loop(start, ins.address, body))
    return sorted(found, key=lambda lp: -len(lp.body))


def hot_loop(instructions: list[Instruction]) -> Loop:
    """The largest innermost loop of a kernel (one holding no other loop): the K loop of the packed-weight
    kernels, or the field loop nested in it."""
    found = loops(instructions)
    if not found:
        raise ValueError("the SASS listing has no backward branch, so the kernel has no loop to count.")
    inner = [lp for lp in found
             if not any(o is not lp and lp.start <= o.start and o.end <= lp.end for o in found)]
    return inner[0]


def loop_mix(loop: Loop) -> Counter:
    """Instructions of a loop body by opcode."""
    return Counter(i.opcode for i in loop.body)


def disassemble(cubin: bytes) -> str:
    """The SASS listing of a cubin, from the ``cuobjdump`` in the Triton wheel (or on ``PATH``)."""
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    tool = str(bundled) if bundled.exists() else "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        proc = subprocess.run([tool, "-sass", fh.name], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump failed on the cubin: {proc.stderr.strip()}")
    return proc.stdout
