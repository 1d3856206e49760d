"""What the PTX instructions of :mod:`ptx_sim` compute on one operand array: bit patterns in uint64 arrays
(one element per thread), their types read off the instruction's suffixes, floating point rounded to
nearest even once per operation (products and sums formed exactly in float64 first)."""

from __future__ import annotations

import re

import numpy as np

_WIDTH = {"8": 8, "16": 16, "32": 32, "64": 64, "16x2": 32}
_TYPE = re.compile(r"(b|u|s|f|bf)(8|16|32|64|16x2)")


def op_type(op: str) -> tuple[str, int]:
    """Kind (b, u, s, f, bf, pred) and width of the last type suffix of ``op``."""
    for part in reversed(op.split(".")):
        m = _TYPE.fullmatch(part)
        if m:
            return m.group(1), _WIDTH[m.group(2)]
        if part == "pred":
            return "pred", 1
    raise NotImplementedError(f"no type in {op!r}")


def op_types(op: str) -> list[tuple[str, int]]:
    """Every type suffix of ``op`` in order (``cvt``: destination first)."""
    return [(m.group(1), _WIDTH[m.group(2)]) for m in
            (_TYPE.fullmatch(p) for p in op.split(".")) if m]


def mask(bits: int) -> np.uint64:
    """The low ``bits`` bits set."""
    return np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)


def signed(v: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` bits of ``v`` as signed int64."""
    v = v.astype(np.int64) if bits == 64 else (v & mask(bits)).astype(np.int64)
    return np.where(v >= (1 << (bits - 1)), v - (1 << bits), v) if bits < 64 else v


def to_float(v: np.ndarray, kind: str, bits: int) -> np.ndarray:
    """Bit patterns → float64 values."""
    if kind == "bf":
        return ((v & mask(16)).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if bits == 16:
        return (v & mask(16)).astype(np.uint16).view(np.float16).astype(np.float64)
    if bits == 32:
        return (v & mask(32)).astype(np.uint32).view(np.float32).astype(np.float64)
    return v.view(np.float64)


def from_float(x: np.ndarray, kind: str, bits: int) -> np.ndarray:
    """float64 values → bit patterns of the type, rounded to nearest even (once)."""
    x = np.asarray(x, np.float64)
    if kind == "bf":  # round the float64 mantissa to 7 bits directly
        b = x.view(np.uint64)
        keep = b + np.uint64(0x0FFFFFFFFFFF) + ((b >> np.uint64(45)) & np.uint64(1))
        r = np.where(np.isnan(x), x, (keep & ~np.uint64((1 << 45) - 1)).view(np.float64))
        return (r.astype(np.float32).view(np.uint32) >> 16).astype(np.uint64)
    if bits == 16:
        return x.astype(np.float16).view(np.uint16).astype(np.uint64)
    if bits == 32:
        return x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return x.view(np.uint64).copy()


def float_op(f, args: list[np.ndarray], kind: str, bits: int, op: str) -> np.ndarray:
    """Apply float function ``f`` to each 16-bit half of packed (x2) operands, or to whole operands, rounding
    to nearest even (``.ftz`` ignored: no result here is subnormal in fp32)."""
    if any(p in ("rz", "rm", "rp", "sat") for p in op.split(".")):
        raise NotImplementedError(f"instruction {op!r}: only round-to-nearest is modelled")
    if op.endswith("x2"):
        out = np.zeros_like(args[0])
        for h in (0, 16):
            vals = [to_float(a >> np.uint64(h), kind, 16) for a in args]
            out |= from_float(f(*vals), kind, 16) << np.uint64(h)
        return out
    return from_float(f(*[to_float(a, kind, bits) for a in args]), kind, bits)


FLOAT_FN = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "fma": lambda a, b, c: a * b + c, "mad": lambda a, b, c: a * b + c, "neg": lambda a: -a,
    "abs": np.abs, "min": np.fmin, "max": np.fmax, "div": lambda a, b: a / b, "rcp": lambda a: 1.0 / a,
    "sqrt": np.sqrt, "ex2": np.exp2, "lg2": np.log2,
}
_ORDERED = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
            "ge": np.greater_equal}
_UNSIGNED = {"lo": "lt", "ls": "le", "hi": "gt", "hs": "ge"}


def compare(cmp: str, x: np.ndarray, y: np.ndarray, kind: str, bits: int) -> np.ndarray:
    """``setp``'s comparison ``cmp`` of two operand arrays: floats ordered (false where either is NaN) unless
    ``cmp`` ends in ``u`` (true there), ``num``/``nan``; integers signed or not as the type says."""
    if kind in ("f", "bf"):
        x, y = to_float(x, kind, bits), to_float(y, kind, bits)
        nan = np.isnan(x) | np.isnan(y)
        if cmp in ("num", "nan"):
            return ~nan if cmp == "num" else nan
        if cmp.endswith("u") and cmp[:-1] in _ORDERED:
            return nan | _ORDERED[cmp[:-1]](x, y)
        return ~nan & _ORDERED[cmp](x, y)
    if kind == "s":
        x, y = signed(x, bits), signed(y, bits)
    else:
        x, y = x & mask(bits), y & mask(bits)
    return _ORDERED[_UNSIGNED.get(cmp, cmp)](x, y)


def convert(op: str, v: np.ndarray) -> tuple[np.ndarray, int]:
    """``cvt`` of one operand array: the result's bits and the width it fills (a signed type narrower than 32
    bits fills a 32-bit register, sign-extended)."""
    (dk, db), (sk, sb) = op_types(op)[:2]
    parts = op.split(".")
    if sk in ("f", "bf"):
        x = to_float(v, sk, sb)
    else:
        x = signed(v, sb) if sk == "s" else (v & mask(sb)).astype(np.int64)
    if dk in ("f", "bf"):
        if any(p in ("rz", "rm", "rp") for p in parts) and (sk not in ("f", "bf") or db < sb):
            raise NotImplementedError(f"instruction {op!r}: only round-to-nearest is modelled")
        return from_float(x.astype(np.float64), dk, db), db
    if sk in ("f", "bf"):
        mode = next((p for p in parts if p in ("rni", "rzi", "rmi", "rpi")), "rzi")
        x = {"rni": np.rint, "rzi": np.trunc, "rmi": np.floor, "rpi": np.ceil}[mode](x)
        lo, hi = (-(1 << (db - 1)), (1 << (db - 1)) - 1) if dk == "s" else (0, (1 << db) - 1)
        x = np.clip(np.nan_to_num(x), lo, hi).astype(np.int64)  # float to integer saturates; NaN gives 0
    elif ".sat" in op:
        raise NotImplementedError(f"instruction {op!r}")
    out = x.astype(np.uint64) & mask(db)
    if dk == "s" and db < 32:
        return signed(out, db).astype(np.uint64), 32
    return out, db


def a_fragment(a: list[np.ndarray], kind: str) -> np.ndarray:
    """The 16x16 A tile of one warp's four 16-bit-pair registers (arrays over its 32 lanes), as ``mma.sync``
    and ``wgmma`` (each warp's 16 rows) lay it out: lane ``l`` holds rows ``l // 4`` and ``l // 4 + 8``,
    columns ``2 (l % 4) + {0, 1}``, + 8 in the last two registers."""
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    A = np.zeros((16, 16))
    for reg, dr, dc in zip(a, (0, 8, 0, 8), (0, 0, 8, 8), strict=True):
        for h in (0, 1):
            A[g + dr, 2 * t + dc + h] = to_float(reg >> np.uint64(16 * h), kind, 16)
    return A


def d_fragment(D: np.ndarray, c: list[np.ndarray] | None) -> list[np.ndarray]:
    """One warp's four fp32 registers of the 16x8 tile ``D`` plus accumulators ``c`` (``None``: zero), rounded
    once: lane ``l`` holds rows ``l // 4`` and ``l // 4 + 8``, columns ``2 (l % 4) + {0, 1}``."""
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    return [from_float(D[g + dr, 2 * t + dc] + (0.0 if c is None else to_float(c[i], "f", 32)), "f", 32)
            for i, (dr, dc) in enumerate(zip((0, 0, 8, 8), (0, 1, 0, 1), strict=True))]


def mma_m16n8k16(a: list[np.ndarray], b: list[np.ndarray], c: list[np.ndarray], kind: str) -> list[np.ndarray]:
    """One warp's ``mma.sync.aligned.m16n8k16.row.col.f32`` of fp16 (``kind`` ``"f"``) or bf16 (``"bf"``) tiles:
    ``a`` (4 registers, :func:`a_fragment`), ``b`` (2) and ``c`` (4 fp32, :func:`d_fragment`), each an array
    over the warp's 32 lanes; lane ``l`` holds B's column ``l // 4``, rows ``2 (l % 4) + {0, 1}`` (+ 8 in its
    second). Products and sums exact, rounded once to fp32."""
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    B = np.zeros((16, 8))
    for reg, dk in zip(b, (0, 8), strict=True):
        for h in (0, 1):
            B[2 * t + dk + h, g] = to_float(reg >> np.uint64(16 * h), kind, 16)
    return d_fragment(a_fragment(a, kind) @ B, c)


def integer(root: str, op: str, s: list[np.ndarray], kind: str, bits: int) -> np.ndarray:
    """Integer and bitwise instruction ``op`` (root ``root``, type ``kind``/``bits``) on operand arrays ``s``
    (uint64 bit patterns); the result's bits (the caller keeps the destination's width)."""
    m = mask(bits)
    sv = (lambda v: signed(v, bits)) if kind == "s" else (lambda v: (v & m).astype(np.int64)
                                                             if bits < 64 else v)
    if root in ("add", "sub", "mul", "mad"):
        if ".wide" in op or ".hi" in op:  # products of 8/16/32-bit operands, exact in 64 bits
            if bits == 64:
                raise NotImplementedError(f"instruction {op!r}")
            x, y = sv(s[0]), sv(s[1])
            r = (x * y).astype(np.uint64) if kind == "s" else x.astype(np.uint64) * y.astype(np.uint64)
            if ".hi" in op:
                r = ((x * y) >> bits).astype(np.uint64) if kind == "s" else r >> np.uint64(bits)
        else:  # the low bits: the same for signed and unsigned operands
            r = s[0] + s[1] if root == "add" else s[0] - s[1] if root == "sub" else s[0] * s[1]
        return r + s[2] if root == "mad" else r
    if root in ("and", "or", "xor"):
        return {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[root](s[0], s[1])
    if root == "not":
        return ~s[0]
    if root == "shl":
        n = np.minimum(s[1] & mask(32), np.uint64(bits))
        return np.where(n >= bits, np.uint64(0), (s[0] & m) << np.minimum(n, np.uint64(63)))
    if root == "shr":
        n = np.minimum(s[1] & mask(32), np.uint64(bits)).astype(np.int64)
        if kind == "s":
            return (sv(s[0]) >> np.minimum(n, 63)).astype(np.uint64)
        return np.where(n >= bits, np.uint64(0), (s[0] & m) >> n.astype(np.uint64))
    if root in ("min", "max"):
        f = np.minimum if root == "min" else np.maximum
        return f(sv(s[0]), sv(s[1])).astype(np.uint64)
    if root == "neg":
        return (-sv(s[0])).astype(np.uint64)
    if root == "abs":
        return np.abs(sv(s[0])).astype(np.uint64)
    if root == "selp":
        return np.where(s[2].astype(bool), s[0], s[1])
    if root == "bfe":
        pos, ln = (s[1] & np.uint64(0xFF)).astype(np.int64), (s[2] & np.uint64(0xFF)).astype(np.int64)
        v = sv(s[0]) if kind == "s" else (s[0] & m).astype(np.int64)
        out = np.zeros(len(s[0]), np.int64)
        for i in range(len(s[0])):
            p, n_ = min(int(pos[i]), bits), min(int(ln[i]), bits)
            f = (int(v[i]) >> p) & ((1 << n_) - 1) if n_ else 0
            if kind == "s" and n_ and (int(v[i]) >> min(p + n_ - 1, bits - 1)) & 1:
                f -= 1 << n_
            out[i] = f
        return out.astype(np.uint64)
    if op == "prmt.b32":  # the default mode
        x = (s[0] & mask(32)) | ((s[1] & mask(32)) << np.uint64(32))
        out = np.zeros(len(s[0]), np.uint64)
        for i in range(4):
            sel = (s[2] >> np.uint64(4 * i)) & np.uint64(0xF)
            byte = (x >> ((sel & np.uint64(7)) * np.uint64(8))) & np.uint64(0xFF)
            sign = (byte >> np.uint64(7)) * np.uint64(0xFF)  # msb mode: the byte's sign replicated
            out |= np.where(sel & np.uint64(8), sign, byte) << np.uint64(8 * i)
        return out
    if root == "lop3":
        lut = int(s[3][0])
        out = np.zeros(len(s[0]), np.uint64)
        for t in range(8):
            if lut >> t & 1:
                ta, tb, tc = (t >> 2) & 1, (t >> 1) & 1, t & 1
                term = ((s[0] if ta else ~s[0]) & (s[1] if tb else ~s[1]) & (s[2] if tc else ~s[2]))
                out |= term
        return out
    if root == "shf":  # funnel shift of the 64-bit {b, a}
        n = s[2] & np.uint64(31) if ".wrap" in op else np.minimum(s[2] & mask(32), np.uint64(32))
        both = ((s[1] & mask(32)) << np.uint64(32)) | (s[0] & mask(32))
        if ".l." in op:
            return (both << n) >> np.uint64(32)
        return both >> n  # the low 32 bits: the same for .s32 (n <= 32)
    if root == "popc":
        return np.array([bin(int(v & m)).count("1") for v in s[0]], np.uint64)
    raise NotImplementedError(f"instruction {op!r}")

