"""The matrix instructions of :mod:`.ptx_sim`: ``ldmatrix``/``stmatrix``, the warp's ``mma.sync`` and Hopper's
warpgroup ``wgmma.mma_async``, as methods its :class:`~.ptx_sim.Machine` inherits.

``wgmma`` runs when it is issued (the program waits for its group before it reads the accumulators or
rewrites the operands, so the result is the same; :mod:`.ptx_races` checks the operands' side of that);
its shared-memory operands are read through their matrix descriptors (start address, leading and stride
byte offsets, a 32/64/128-byte swizzle of the address's 16-byte unit by its bits 7 and up; not the
unswizzled layout), K-major or, with the transpose flag, MN-major. Products and sums exact, rounded once to fp32; a form it does not know raises.
"""

from __future__ import annotations

import re

import numpy as np

from .ptx_values import a_fragment, d_fragment, mask, mma_m16n8k16, to_float

_SWIZZLE_BYTES = {1: 128, 2: 64, 3: 32}  # descriptor bits 62-63 -> bytes of one swizzled row
_WGMMA = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k16\.f32\.(b?f16)\.(b?f16)")


def _regs(text: str) -> list[str]:
    """The registers of a ``{%r1, %r2, ...}`` list."""
    return [r.strip() for r in text.strip()[1:-1].split(",")]


def operand_offsets(desc: int, mn: int, k_major: bool) -> np.ndarray:
    """Shared-memory byte address of each element ``(i, k)`` (``i < mn`` along M or N, ``k < 16``) of a 16-bit
    ``wgmma`` operand read through matrix descriptor ``desc`` with a 32, 64 or 128-byte swizzle: rows of the
    swizzle's width, eight to an atom, the address's 16-byte unit XOR-ed with its bits 7 and up."""
    start, lbo, sbo = (desc & 0x3FFF) << 4, ((desc >> 16) & 0x3FFF) << 4, ((desc >> 32) & 0x3FFF) << 4
    if (desc >> 49) & 7:
        raise NotImplementedError(f"a wgmma descriptor with a matrix base offset ({hex(desc)})")
    i, k = np.arange(mn)[:, None], np.arange(16)[None, :]
    mode = (desc >> 62) & 3
    if mode == 0:
        raise NotImplementedError(f"a wgmma operand without a swizzle ({hex(desc)})")
    width = _SWIZZLE_BYTES[mode]
    if k_major:  # a row of `width` bytes per i (its 16 k's at the start address), SBO steps i by 8
        addr = start + (i // 8) * sbo + (i % 8) * width + k * 2
    else:  # a row of width / 2 contiguous i per k, LBO steps i by width / 2, SBO steps k by 8
        per = width // 2
        addr = start + (i // per) * lbo + (k // 8) * sbo + (k % 8) * width + (i % per) * 2
    return addr ^ (((addr >> 7) & (width // 16 - 1)) << 4)


class MatrixUnit:
    """``ldmatrix``, ``stmatrix``, ``mma.sync`` and ``wgmma`` for :class:`~.ptx_sim.Machine` (which provides
    ``n``, ``tid``, ``smem``, ``races``, ``get``, ``put``, ``_addr``, ``_load`` and ``_store``)."""

    def _matrix(self, root: str, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        """``ldmatrix``/``stmatrix`` of 8x8 tiles of 16-bit values: lanes ``8 i .. 8 i + 7`` address tile ``i``'s
        rows, and lane ``l`` holds elements ``(l // 4, 2 (l % 4) + {0, 1})`` of each tile (``.trans``: of its
        transpose)."""
        if not active.all():
            raise NotImplementedError(f"a predicated {op}")
        count = next(int(p[1:]) for p in op.split(".") if p in ("x1", "x2", "x4"))
        trans = ".trans" in op
        regs, addr = (a[0], a[1]) if root == "ldmatrix" else (a[1], a[0])
        names = _regs(regs)
        base, off = self._addr(addr)
        rows = (base + np.uint64(off)) & mask(32)
        lane = self.tid & np.uint64(31)
        warp0 = (self.tid // np.uint64(32)) * np.uint64(32)

        def at(i, row, col):  # byte address of element (row, col) of tile i, for every lane
            return rows[(warp0 + np.uint64(8 * i) + row).astype(np.int64)] + np.uint64(2) * col

        r, c = lane // np.uint64(4), np.uint64(2) * (lane % np.uint64(4))
        for i, name in enumerate(names[:count]):
            first, second = ((at(i, c, r), at(i, c + np.uint64(1), r)) if trans
                             else (at(i, r, c), at(i, r, c + np.uint64(1))))
            if root == "ldmatrix":
                v = self._load("shared", first, 2, active) | (self._load("shared", second, 2, active) << np.uint64(16))
                self.put(name, v, 32, active)
            else:
                v = self.get(name)
                self._store("shared", first, 2, v & mask(16), active)
                self._store("shared", second, 2, v >> np.uint64(16), active)

    def _mma(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        parts = op.split(".")
        if "m16n8k16" not in parts or parts[-4:] not in (["f32", "f16", "f16", "f32"], ["f32", "bf16", "bf16", "f32"]):
            raise NotImplementedError(f"instruction {op!r}")
        if not active.all():
            raise NotImplementedError(f"a predicated {op}")
        regs = [[self.get(r) for r in _regs(x)] for x in a[1:]]
        out = [np.zeros(self.n, np.uint64) for _ in range(4)]
        for w in range(self.n // 32):  # one warp at a time
            sl = slice(32 * w, 32 * w + 32)
            d = mma_m16n8k16(*([r[sl] for r in group] for group in regs), "bf" if parts[-3] == "bf16" else "f")
            for i in range(4):
                out[i][sl] = d[i]
        for name, v in zip(_regs(a[0]), out, strict=True):
            self.put(name, v, 32, active)

    def _wgmma(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        """``wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16}`` per warpgroup (four warps): A from
        registers (warp ``w`` holds rows ``16 w ..`` as :func:`~.ptx_values.a_fragment`) or a descriptor, B from
        a descriptor, D in registers (warp ``w``'s registers ``4 j .. 4 j + 3``: its rows' columns ``8 j ..``,
        as :func:`~.ptx_values.d_fragment`). ``fence`` has nothing left to do, ``commit_group`` and
        ``wait_group`` only tell the race check."""
        if op.startswith(("wgmma.fence", "wgmma.commit_group", "wgmma.wait_group")):
            if self.races and op.startswith("wgmma.commit_group"):
                self.races.operand_commit(active)
            elif self.races and op.startswith("wgmma.wait_group"):
                self.races.operand_wait(int(a[0], 0), active)
            return
        m = _WGMMA.fullmatch(op)
        if m is None or m.group(2) != m.group(3):
            raise NotImplementedError(f"instruction {op!r}")
        if not active.all() or self.n % 128:
            raise NotImplementedError(f"a predicated {op}, or one in a CTA of {self.n} threads (not whole warpgroups)")
        n, kind = int(m.group(1)), "bf" if m.group(2) == "bf16" else "f"
        a_regs = a[1].strip().startswith("{")
        if len(a) != (7 if a_regs else 8):
            raise NotImplementedError(f"{op} with {len(a)} operands")
        scale_d = self.get(a[3]).astype(bool)
        sign = int(a[4], 0) * int(a[5], 0)
        trans_a, trans_b = (0, int(a[6], 0)) if a_regs else (int(a[6], 0), int(a[7], 0))
        d_names = _regs(a[0])
        if len(d_names) != n // 2:
            raise NotImplementedError(f"{op} with {len(d_names)} accumulators")
        acc = [self.get(r) for r in d_names]
        a_vals = [self.get(r) for r in _regs(a[1])] if a_regs else None
        descs = [self.get(x) for x in ((a[1], a[2]) if not a_regs else (a[2],))]
        out = [np.zeros(self.n, np.uint64) for _ in d_names]
        for g in range(self.n // 128):
            sl = slice(128 * g, 128 * g + 128)
            for name, v in [("scale-d", scale_d)] + [("descriptor", d) for d in descs]:
                if (v[sl] != v[sl][0]).any():
                    raise NotImplementedError(f"{op} whose {name} differs within a warpgroup")
            warps = [slice(128 * g + 32 * w, 128 * g + 32 * w + 32) for w in range(4)]
            if a_regs:  # warp w holds rows 16 w .. 16 w + 15
                A = np.concatenate([a_fragment([r[ws] for r in a_vals], kind) for ws in warps])
            else:
                A = self._wgmma_operand(int(descs[0][sl][0]), 64, not trans_a, kind, g)
            B = self._wgmma_operand(int(descs[-1][sl][0]), n, not trans_b, kind, g).T  # [16, n]
            D = sign * (A @ B)
            for w, ws in enumerate(warps):  # registers 4 j .. 4 j + 3: columns 8 j .. 8 j + 7 of the warp's rows
                for j in range(n // 8):
                    prior = [acc[4 * j + i][ws] for i in range(4)] if scale_d[sl][0] else None
                    for i, v in enumerate(d_fragment(D[16 * w:16 * w + 16, 8 * j:8 * j + 8], prior)):
                        out[4 * j + i][ws] = v
        for name, v in zip(d_names, out, strict=True):
            self.put(name, v, 32, active)

    def _wgmma_operand(self, desc: int, mn: int, k_major: bool, kind: str, group: int) -> np.ndarray:
        """The ``[mn, 16]`` values of a shared-memory operand (see :func:`operand_offsets`) of warpgroup
        ``group``'s ``wgmma``."""
        addr = operand_offsets(desc, mn, k_major).astype(np.int64)
        if addr.min() < 0 or addr.max() + 2 > self.smem.size:
            raise IndexError(f"a wgmma operand past shared memory ({hex(desc)})")
        if self.races:
            self.races.operand_read(group, np.concatenate([addr, addr + 1]))
        bits = self.smem[addr].astype(np.uint64) | (self.smem[addr + 1].astype(np.uint64) << np.uint64(8))
        return to_float(bits, kind, 16)
