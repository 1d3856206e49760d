"""A small PTX interpreter: runs a compiled kernel's own PTX on the CPU, to check what a GPU would compute.

One CTA at a time, all its threads in lockstep (a branch must go the same way for every thread of the CTA,
as the project's kernels' loops do; a divergent one raises; what another schedule could change, a
missing barrier or fence, :mod:`.ptx_races` finds and raises as a ``DataRace``), global
memory as the numpy arrays passed as pointer arguments (an access outside them raises), shared memory
as one byte array per CTA. It knows the instructions Triton emits for the kernels of this package
(``cp.async`` included; the matrix instructions, Hopper's ``wgmma`` among them, in :mod:`.ptx_matrix`) and
the PTX they inline; any other raises ``NotImplementedError`` naming it, so no kernel runs with an
instruction skipped. What each instruction computes is in :mod:`.ptx_values`. :attr:`Machine.traffic` counts each buffer's global
reads as a GPU's memory system would see them: bytes asked for, 32-byte sectors per warp-wide request,
and distinct sectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .ptx_matrix import MatrixUnit
from .ptx_races import Ordering, RaceCheck
from .ptx_values import (
    FLOAT_FN,
    compare,
    convert,
    float_op,
    from_float,
    integer,
    mask,
    op_type,
    signed,
    to_float,
)

_SPECIAL = re.compile(r"%(tid|ctaid|nctaid|ntid)\.([xyz])|%laneid")
_BASE_SHIFT = 36  # global pointers: buffer i lives at (i + 1) << _BASE_SHIFT


@dataclass(frozen=True)
class Instruction:
    """One PTX instruction: its guard, opcode with modifiers (``ld.global.v4.b32``) and operands as written."""

    guard: str | None  # predicate register, "!" in front when negated
    op: str
    args: tuple[str, ...]


@dataclass
class Traffic:
    """One buffer's global reads, in bytes: ``requested`` (every thread's, broadcasts included), ``sectors``
    (the 32-byte sectors each warp-wide load touches: what L1 serves), ``per_program`` (each program's
    distinct sectors, summed: what L2 serves if L1 keeps what a program read), ``unique`` (distinct sectors:
    what DRAM serves at best)."""

    requested: int = 0
    sectors: int = 0
    per_program: int = 0
    seen: set = field(default_factory=set)

    @property
    def unique(self) -> int:
        return 32 * len(self.seen)


@dataclass
class Kernel:
    """A parsed ``.entry``: its parameters, straight-line instructions and the index each label points at."""

    name: str
    params: list[tuple[str, str]]  # (name, type) in order
    code: list[Instruction]
    labels: dict[str, int]


def _split_args(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse(ptx: str) -> Kernel:
    """The first ``.entry`` of ``ptx``: its parameters, instructions and labels."""
    head = re.search(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S)
    if head is None:
        raise ValueError("no .entry in the PTX")
    params = []
    for p in head.group(2).split(","):
        words = p.split()
        if words:
            params.append((words[-1], words[1].lstrip(".")))
    start = ptx.index("\n{", head.end())
    end = ptx.index("\n}", start)
    lines = []
    for line in ptx[start + 2:end].splitlines():
        line = line.split("//")[0].strip()
        if line and not line.startswith((".loc", ".reg", ".file", ".pragma")):
            lines.append(line)
    code, labels = [], {}
    for stmt in " \n".join(lines).split(";"):
        stmt = stmt.strip()
        while True:
            label = re.match(r"^([$\w]+):", stmt)
            if label:
                labels[label.group(1)] = len(code)
                stmt = stmt[label.end():].strip()
            elif stmt[:1] in "{}" and stmt:
                stmt = stmt[1:].strip()
            else:
                break
        if not stmt or stmt.startswith(".reg"):
            continue
        guard = None
        if stmt.startswith("@"):
            guard, stmt = stmt[1:].split(None, 1)
        op, rest = re.match(r"(\S+)\s*(.*)", stmt, re.S).groups()
        code.append(Instruction(guard, op, tuple(_split_args(rest))))
    return Kernel(head.group(1), params, code, labels)


class Machine(MatrixUnit, Ordering):
    """Runs one parsed kernel over a grid of CTAs of ``num_warps`` warps with ``shared_bytes`` of shared memory,
    checking each run for data races (:class:`~.ptx_races.RaceCheck`) unless ``check_races`` is false."""

    def __init__(self, kernel: Kernel, num_warps: int, shared_bytes: int = 0, check_races: bool = True):
        self.k, self.n = kernel, 32 * num_warps
        self.tid = np.arange(self.n, dtype=np.uint64)
        self.shared_bytes, self.check_races = shared_bytes, check_races
        self.races: RaceCheck | None = None

    def _where(self, space: str, addr: np.ndarray, active: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(lane mask, byte array, offsets) per buffer the active lanes' addresses fall in."""
        if space == "shared":
            return [(active, self.smem, (addr & mask(32)).astype(np.int64))]
        out = []
        idx = (addr >> np.uint64(_BASE_SHIFT)).astype(np.int64) - 1
        for b in np.unique(idx[active]):
            if b < 0 or b >= len(self.mem):
                raise IndexError(f"global address outside every buffer: {hex(int(addr[active & (idx == b)][0]))}")
            sel = active & (idx == b)
            out.append((sel, self.mem[b], (addr - np.uint64((int(b) + 1) << _BASE_SHIFT)).astype(np.int64)))
        return out

    def _load(self, space: str, addr: np.ndarray, nbytes: int, active: np.ndarray, track: bool = True) -> np.ndarray:
        """Each active lane's ``nbytes`` at ``addr`` (``track``: a shared read the race check sees)."""
        val = np.zeros(self.n, np.uint64)
        for sel, buf, off in self._where(space, addr, active):
            if not sel.any():
                continue
            o = off[sel]
            if (o < 0).any() or (o + nbytes > buf.size).any():
                raise IndexError(f"{space} load past the end of its buffer")
            if space == "shared" and track and self.races:
                self.races.shared_read(off, nbytes, sel)
            for i in range(nbytes):
                val[sel] |= buf[o + i].astype(np.uint64) << np.uint64(8 * i)
        return val

    def _store(self, space: str, addr: np.ndarray, nbytes: int, val: np.ndarray, active: np.ndarray,
               track: bool = True) -> None:
        for sel, buf, off in self._where(space, addr, active):
            if not sel.any():
                continue
            o, v = off[sel], val[sel]
            if (o < 0).any() or (o + nbytes > buf.size).any():
                raise IndexError(f"{space} store past the end of its buffer")
            if space == "shared" and track and self.races:
                self.races.shared_write(off, nbytes, val, sel)
            for lane_o, lane_v in zip(o, v, strict=True):  # in lane order, as one warp-wide store resolves
                for i in range(nbytes):
                    buf[lane_o + i] = (int(lane_v) >> (8 * i)) & 0xFF

    def _count(self, addr: np.ndarray, nbytes: int, active: np.ndarray) -> None:
        """One warp-wide global read of ``nbytes`` per active thread from ``addr``, into :attr:`traffic`."""
        for w in range(self.n // 32):
            on = active[32 * w:32 * w + 32]
            if not on.any():
                continue
            lanes = addr[32 * w:32 * w + 32][on].astype(np.int64)
            for buf in np.unique(lanes >> _BASE_SHIFT).tolist():
                start = lanes[(lanes >> _BASE_SHIFT) == buf]
                sectors = set()
                for lo, hi in zip((start >> 5).tolist(), ((start + nbytes - 1) >> 5).tolist(), strict=True):
                    sectors.update(range(lo, hi + 1))
                name = self._names[buf - 1]
                t = self.traffic.setdefault(name, Traffic())
                mine = self._program_seen.setdefault(name, set())
                t.requested += len(start) * nbytes
                t.sectors += 32 * len(sectors)
                t.per_program += 32 * len(sectors - mine)
                t.seen |= sectors
                mine |= sectors

    def get(self, a: str) -> np.ndarray:
        """An operand's value in every thread: a register, special register, symbol or immediate."""
        a = a.strip()
        if a in self.r:
            return self.r[a]
        m = _SPECIAL.fullmatch(a)
        if m:
            if a == "%laneid":
                return self.tid & np.uint64(31)
            axis = "xyz".index(m.group(2))
            val = {"tid": (self.tid if axis == 0 else np.zeros(self.n, np.uint64)),
                   "ctaid": np.full(self.n, self.pid[axis], np.uint64),
                   "nctaid": np.full(self.n, self.grid[axis], np.uint64),
                   "ntid": np.full(self.n, self.n if axis == 0 else 1, np.uint64)}[m.group(1)]
            return val
        if re.fullmatch(r"%[a-z]+\d+", a):  # never written (LLVM's undef, in a part no result keeps): all ones,
            return np.full(self.n, 0xFFFFFFFFFFFFFFFF, np.uint64)  # NaN as a float, -1 as an integer, if one did
        if a in self.symbols:
            return np.full(self.n, self.symbols[a], np.uint64)
        if re.fullmatch(r"0[fF][0-9a-fA-F]{8}", a):
            return np.full(self.n, int(a[2:], 16), np.uint64)
        if re.fullmatch(r"0[dD][0-9a-fA-F]{16}", a):
            return np.full(self.n, int(a[2:], 16), np.uint64)
        if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)[uU]?", a):
            return np.full(self.n, int(a.rstrip("uU"), 0) & ((1 << 64) - 1), np.uint64)
        raise NotImplementedError(f"operand {a!r}")

    def put(self, d: str, v: np.ndarray, bits: int, active: np.ndarray) -> None:
        """Write the low ``bits`` of ``v`` to register ``d`` in the ``active`` threads (``_``: nowhere)."""
        if d == "_":
            return
        v = v & mask(bits) if v.dtype == np.uint64 else v
        old = self.r.get(d)
        self.r[d] = v.copy() if old is None or active.all() else np.where(active, v, old)

    def _addr(self, a: str) -> tuple[np.ndarray, int]:
        inner = a.strip()[1:-1].replace(" ", "")
        reg, _, off = inner.partition("+")
        return self.get(reg), int(off or "0", 0)

    def run(self, args: list, grid: tuple[int, int, int], max_steps: int = 5_000_000,
            programs: list[tuple[int, int, int]] | None = None) -> None:
        """``args``: one value per kernel parameter: an int for a scalar, a contiguous numpy array for a pointer
        (read and written in place); pointers Triton adds past the kernel's own arguments may be ``None``.
        ``programs``: the program ids to run (default: the whole grid, x fastest)."""
        if len(args) != len(self.k.params):
            raise ValueError(f"{self.k.name} takes {len(self.k.params)} parameters, got {len(args)}")
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        self.mem = [a.reshape(-1).view(np.uint8) for a in arrays]
        self.params, self._names = {}, []
        for (name, _), a in zip(self.k.params, args, strict=True):
            if isinstance(a, np.ndarray):
                self._names.append(name)
                self.params[name] = len(self._names) << _BASE_SHIFT
            else:
                self.params[name] = int(a or 0) & ((1 << 64) - 1)
        self.grid = grid
        self.traffic: dict[str, Traffic] = {}  # by the PTX name of the pointer parameter
        if programs is None:
            programs = [(x, y, z) for z in range(grid[2]) for y in range(grid[1]) for x in range(grid[0])]
        self.races = RaceCheck(self.n, self.shared_bytes, _BASE_SHIFT, [m.size for m in self.mem]) \
            if self.check_races else None
        for pid in programs:
            if not all(0 <= p < g for p, g in zip(pid, grid, strict=True)):
                raise ValueError(f"program {pid} is outside the grid {grid}")
            self.pid = pid
            self._cta(max_steps)

    def _cta(self, max_steps: int) -> None:
        self.r: dict[str, np.ndarray] = {}
        self.smem = np.zeros(max(self.shared_bytes, 1), np.uint8)
        if self.races:
            x, y, z = self.pid
            self.races.start_cta(x + self.grid[0] * (y + self.grid[1] * z), self.smem)
        self.symbols = {"global_smem": 0}
        self._program_seen: dict[str, set] = {}
        pc, steps, code = 0, 0, self.k.code
        while pc < len(code):
            steps += 1
            if steps > max_steps:
                raise RuntimeError(f"{self.k.name}: more than {max_steps} instructions in one CTA")
            ins = code[pc]
            active = np.ones(self.n, bool)
            if ins.guard:
                neg = ins.guard.startswith("!")
                active = self.get(ins.guard.lstrip("!")).astype(bool)
                active = ~active if neg else active
            pc += 1
            root = ins.op.split(".")[0]
            if root in ("bra", "ret", "exit"):
                if active.any() and not active.all():
                    raise NotImplementedError(f"{self.k.name}: a divergent {root} at instruction {pc - 1}")
                if active.all():
                    if root != "bra":
                        return
                    pc = self.k.labels[ins.args[0]]
                continue
            try:
                self.step(ins, root, active)
            except (NotImplementedError, IndexError, RuntimeError) as e:
                raise type(e)(f"{e} (at instruction {pc - 1}: {ins.op} {', '.join(ins.args)})") from e

    def step(self, ins: Instruction, root: str, active: np.ndarray) -> None:
        op, a = ins.op, ins.args
        if root in ("bar", "barrier", "fence", "membar"):
            return self._sync(op, a, active)
        if root == "mov":
            return self._mov(op, a, active)
        if root in ("ld", "st"):
            return self._ldst(root, op, a, active)
        if root in ("atom", "red"):
            return self._atom(root, op, a, active)
        if root == "shfl":
            return self._shfl(op, a, active)
        if root in ("ldmatrix", "stmatrix"):
            return self._matrix(root, op, a, active)
        if root == "mma":
            return self._mma(op, a, active)
        if root == "wgmma":
            return self._wgmma(op, a, active)
        if root == "cp" and op.startswith("cp.async"):
            return self._cp_async(op, a, active)
        if root == "cvt":
            return self._cvt(op, a, active)
        if root == "setp":
            return self._setp(op, a, active)
        kind, bits = op_type(op)
        if kind == "pred":
            vals = [self.get(x).astype(bool) for x in a[1:]]
            fn = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor, "not": np.logical_not}[root]
            return self.put(a[0], fn(*vals).astype(np.uint64), 1, active)
        if kind in ("f", "bf") and root in FLOAT_FN:
            out = float_op(FLOAT_FN[root], [self.get(x) for x in a[1:]], kind, bits, op)
            return self.put(a[0], out, bits, active)
        src = [self.get(x) for x in a[1:]]
        with np.errstate(over="ignore"):
            out = integer(root, op, src, kind, bits)
        return self.put(a[0], out, 2 * bits if ".wide" in op else bits, active)

    def _mov(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        kind, bits = op_type(op)
        d, s = a
        if d.startswith("{"):  # unpack: the lowest part first
            parts = _split_args(d[1:-1])
            w = bits // len(parts)
            v = self.get(s)
            for i, p in enumerate(parts):
                self.put(p, (v >> np.uint64(w * i)) & mask(w), w, active)
        elif s.startswith("{"):
            parts = _split_args(s[1:-1])
            w = bits // len(parts)
            v = np.zeros(self.n, np.uint64)
            for i, p in enumerate(parts):
                v |= (self.get(p) & mask(w)) << np.uint64(w * i)
            self.put(d, v, bits, active)
        else:
            self.put(d, self.get(s), bits, active)

    def _ldst(self, root: str, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        parts = op.split(".")
        space = next((p.split("::")[0] for p in parts
                      if p.split("::")[0] in ("global", "shared", "param", "local", "const")), "global")
        kind, bits = op_type(op)
        vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v[248]", p)), 1)
        nbytes = bits // 8
        if space == "param":
            name = a[1].strip()[1:-1].strip()
            return self.put(a[0], np.full(self.n, self.params[name], np.uint64), bits, active)
        regs, addr = (a[0], a[1]) if root == "ld" else (a[1], a[0])
        names = _split_args(regs.strip()[1:-1]) if regs.strip().startswith("{") else [regs]
        base, off = self._addr(addr)
        if len(names) != vec:
            raise NotImplementedError(f"{op} with {len(names)} registers")
        if root == "ld" and space == "global":
            self._count(base + np.uint64(off), vec * nbytes, active)
        if space == "global" and self.races:
            self._global_order(root, op, base + np.uint64(off), vec * nbytes, active)
        for i, nm in enumerate(names):
            at = base + np.uint64(off + i * nbytes)
            if root == "ld":
                v = self._load(space, at, nbytes, active)
                if kind == "s" and bits < 32:
                    v = signed(v, bits).astype(np.uint64)
                self.put(nm, v, max(bits, 32) if kind == "s" else bits, active)
            else:
                self._store(space, at, nbytes, self.get(nm), active)

    def _atom(self, root: str, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        kind, bits = op_type(op)
        parts = op.split(".")
        space = "shared" if any(p.startswith("shared") for p in parts) else "global"
        action = next(p for p in parts if p in ("add", "exch", "cas", "max", "min", "and", "or", "inc"))
        d, rest = (a[0], a[1:]) if root == "atom" else ("_", a)
        base, off = self._addr(rest[0])
        at = base + np.uint64(off)
        if space == "global" and self.races:
            self._global_order(root, op, at, bits // 8, active)
        vals = [self.get(x) for x in rest[1:]]
        old = np.zeros(self.n, np.uint64)
        for i in np.nonzero(active)[0]:  # one lane after another, as the memory system serializes them
            lane = np.zeros(self.n, bool)
            lane[i] = True
            cur = self._load(space, at, bits // 8, lane, track=False)
            old[i] = cur[i]
            if action == "add" and kind == "f":
                new = from_float(to_float(cur, kind, bits) + to_float(vals[0], kind, bits), kind, bits)
            elif action == "add":
                new = (cur + vals[0]) & mask(bits)
            elif action == "exch":
                new = vals[0]
            elif action == "cas":
                new = np.where((cur & mask(bits)) == (vals[0] & mask(bits)), vals[1], cur)
            else:
                raise NotImplementedError(f"instruction {op!r}")
            self._store(space, at, bits // 8, new, lane, track=False)
        self.put(d, old, bits, active)

    def _shfl(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        mode = op.split(".")[2]
        d = a[0].split("|")[0]
        v, b, c = self.get(a[1]), self.get(a[2]).astype(np.int64), self.get(a[3]).astype(np.int64)
        lane = (self.tid & np.uint64(31)).astype(np.int64)
        warp0 = (self.tid.astype(np.int64) // 32) * 32
        clamp, seg = c & 0x1F, (c >> 8) & 0x1F
        lo = lane & seg
        hi = lo | (clamp & ~seg)
        j = {"idx": lo | (b & ~seg), "bfly": lane ^ b, "up": lane - b, "down": lane + b}[mode]
        ok = j >= hi if mode == "up" else j <= hi
        j = np.where(ok, j, lane)
        self.put(d, v[warp0 + j], 32, active)

    def _cp_async(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        """``cp.async`` done at once (a schedule the asynchronous copy allows: the program waits before it
        reads the destination, which the race check holds it to); ``commit_group`` and ``wait_group`` only
        tell the race check."""
        if op.startswith(("cp.async.commit_group", "cp.async.wait_group", "cp.async.wait_all")):
            if self.races and op.startswith("cp.async.commit_group"):
                self.races.copy_commit(active)
            elif self.races:
                self.races.copy_wait(int(a[0], 0) if op.startswith("cp.async.wait_group") else None, active)
            return
        dst, dst_off = self._addr(a[0])
        src, src_off = self._addr(a[1])
        size = int(a[2], 0)
        # bytes past the source size (the fourth operand; 0: a copy masked off) are zero-filled, not read
        read = np.full(self.n, size, np.int64) if len(a) < 4 else np.minimum(self.get(a[3]).astype(np.int64), size)
        if (read % size != 0).any():
            raise NotImplementedError(f"{op} reading part of its {size} bytes")
        self._count(src + np.uint64(src_off), size, active & (read > 0))
        if self.races:
            self.races.global_access(False, src + np.uint64(src_off), size, active & (read > 0))
            self.races.async_copy((dst + np.uint64(dst_off)) & mask(32), size, active)
        for i in range(size):
            byte = self._load("global", src + np.uint64(src_off + i), 1, active & (read > i))
            self._store("shared", dst + np.uint64(dst_off + i), 1, byte, active, track=False)

    def _cvt(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        if op.startswith(("cvt.rn.f16x2.f32", "cvt.rn.bf16x2.f32")):  # d.hi from a, d.lo from b
            k = "bf" if "bf16x2" in op else "f"
            hi = from_float(to_float(self.get(a[1]), "f", 32), k, 16)
            lo = from_float(to_float(self.get(a[2]), "f", 32), k, 16)
            return self.put(a[0], (hi << np.uint64(16)) | lo, 32, active)
        self.put(a[0], *convert(op, self.get(a[1])), active)

    def _setp(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        parts = op.split(".")
        kind, bits = op_type(op)
        res = compare(parts[1], self.get(a[1]), self.get(a[2]), kind, bits)
        if len(parts) > 3 and parts[2] in ("and", "or", "xor"):
            other = self.get(a[3]).astype(bool)
            res = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}[parts[2]](res, other)
        dests = a[0].split("|")
        self.put(dests[0].strip(), res.astype(np.uint64), 1, active)
        if len(dests) > 1:
            self.put(dests[1].strip(), (~res).astype(np.uint64), 1, active)
