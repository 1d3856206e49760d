"""Compression options: parse option names and count the exact storage cost of each on a unit.

Option names (one grammar for configs, plans, profiles and exports):

- ``dense``                      — the original weight, stored as fp16 (16 bits per weight);
- ``rtn-b4-g128``, ``gptq-b3-gch`` — asymmetric integer quantization at 2–8 bits with an fp16 scale
  and fp16 zero per group of ``g`` input columns (``gch``: one group per output row);
- ``magnitude-0.5``, ``wanda-0.7``, ``sparsegpt-0.6`` — unstructured sparsity (fraction of zeros),
  stored as fp16 kept values plus a 1-bit mask;
- ``magnitude-2:4``, ``wanda-2:4``, ``sparsegpt-2:4`` — 2:4 semi-structured: fp16 kept values plus a
  2-bit index per kept value;
- ``sparsegpt-2:4+gptq-b4-g128`` (any sparsity part ``+`` any quantization part) — the kept values
  quantized instead of fp16;
- ``drop`` — a sub-block option: the attention or MLP sub-block is replaced by the identity.

Costs are exact integers of bits (metadata included) so budgets are checked without rounding.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from layerbudget.errors import LayerbudgetError

DENSE = "dense"
DROP = "drop"
QUANT_METHODS = ("rtn", "gptq")
SPARSE_METHODS = ("magnitude", "wanda", "sparsegpt")
BITS = (2, 3, 4, 5, 6, 8)
DENSE_BITS = 16
META_BITS = 32  # fp16 scale + fp16 zero per group



def num_pruned(count: int, sparsity: float) -> int:
    """Weights zeroed in a comparison group of ``count`` at ``sparsity``: ``floor(sparsity·count + 0.5)``.

    Every pruner follows this rule (per output row for Wanda and SparseGPT, per matrix for
    magnitude pruning), so an option's cost is known before it is built.
    """
    # the 1e-9 keeps products such as 0.7 * 10 = 7.000000000000001 or 2.4999999999 from flipping
    return min(count, int(math.floor(sparsity * count + 0.5 + 1e-9)))


_QUANT_RE = re.compile(r"^(?P<m>[a-z]+)-b(?P<b>\d+)-g(?P<g>\d+|ch)$")
_SPARSE_RE = re.compile(r"^(?P<m>[a-z]+)-(?P<s>2:4|0\.\d+)$")

GRAMMAR = "dense | drop | {rtn,gptq}-b{2,3,4,5,6,8}-g{N,ch} | {magnitude,wanda,sparsegpt}-{0.x,2:4}[+quant]"


@dataclass(frozen=True)
class Option:
    """One way to compress a unit; build with :func:`parse_option`."""

    name: str
    quant: str | None = None  # quantization method ("rtn", "gptq") or None
    bits: int | None = None
    group_size: int | None = None  # None = one group per output row
    sparse: str | None = None  # sparsity method ("magnitude", "wanda", "sparsegpt") or None
    sparsity: float | None = None  # fraction of zeros (0.5 for 2:4)
    pattern: str | None = None  # "2:4" or None (unstructured)

    @property
    def is_dense(self) -> bool:
        return self.name == DENSE

    @property
    def is_drop(self) -> bool:
        return self.name == DROP

    @property
    def needs_calibration(self) -> bool:
        """True when building the variant needs calibration activations (GPTQ, SparseGPT, Wanda)."""
        return self.quant == "gptq" or self.sparse in ("wanda", "sparsegpt")

    def applies_to(self, shape: tuple[int, int]) -> str | None:
        """``None`` when the option applies to a ``[N, K]`` weight, else the reason it does not."""
        _, k = shape
        if self.group_size is not None and k % self.group_size != 0:
            return f"group size {self.group_size} does not divide K={k}"
        if self.pattern == "2:4" and k % 4 != 0:
            return f"2:4 needs K divisible by 4, but K={k}"
        return None

    def zeros(self, shape: tuple[int, int]) -> int:
        """Exact number of zero weights the option leaves in a ``[N, K]`` weight."""
        n, k = shape
        if self.is_drop:
            return n * k
        if self.pattern == "2:4":
            return n * k // 2
        if self.sparsity is not None:
            return n * num_pruned(k, self.sparsity)  # every output row loses the same count
        return 0

    def cost_bits(self, shape: tuple[int, int]) -> int:
        """Exact storage bits of a ``[N, K]`` weight under this option, metadata included."""
        n, k = shape
        if self.is_drop:
            return 0
        kept = n * k - self.zeros(shape)
        if self.bits is not None:
            g = k if self.group_size is None else self.group_size
            value_bits = kept * self.bits + n * (k // g) * META_BITS
        else:
            value_bits = kept * DENSE_BITS
        if self.pattern == "2:4":
            return value_bits + kept * 2  # 2-bit position of each kept value in its group of 4
        if self.sparsity is not None:
            return value_bits + n * k  # 1-bit mask per weight
        return value_bits


@lru_cache(maxsize=4096)
def parse_option(name: str) -> Option:
    """Parse an option name; raise :class:`LayerbudgetError` naming the grammar when it is invalid."""
    if not isinstance(name, str):
        raise LayerbudgetError(f"option names are strings, but got {name!r}")
    if name in (DENSE, DROP):
        return Option(name)
    sparse_part, _, quant_part = name.partition("+") if "+" in name else ("", "", name)
    fields: dict[str, object] = {}
    if "+" not in name and _SPARSE_RE.match(name):
        sparse_part, quant_part = name, ""
    if sparse_part:
        m = _SPARSE_RE.match(sparse_part)
        if not m or m["m"] not in SPARSE_METHODS:
            raise LayerbudgetError(f"unknown option {name!r}; options look like {GRAMMAR}")
        s = m["s"]
        fields.update(sparse=m["m"], sparsity=0.5 if s == "2:4" else float(s), pattern="2:4" if s == "2:4" else None)
        if s != "2:4" and not 0.0 < float(s) < 1.0:
            raise LayerbudgetError(f"sparsity in option {name!r} must be in (0, 1)")
    if quant_part:
        m = _QUANT_RE.match(quant_part)
        if not m or m["m"] not in QUANT_METHODS:
            raise LayerbudgetError(f"unknown option {name!r}; options look like {GRAMMAR}")
        bits = int(m["b"])
        if bits not in BITS:
            raise LayerbudgetError(f"option {name!r} asks for {bits} bits; supported bits are {BITS}")
        g = None if m["g"] == "ch" else int(m["g"])
        if g is not None and g < 1:
            raise LayerbudgetError(f"group size in option {name!r} must be positive")
        fields.update(quant=m["m"], bits=bits, group_size=g)
    if not fields:
        raise LayerbudgetError(f"unknown option {name!r}; options look like {GRAMMAR}")
    return Option(name, **fields)  # type: ignore[arg-type]


def parse_options(names: list[str]) -> list[Option]:
    """Parse a list of option names, rejecting duplicates."""
    seen: set[str] = set()
    out = []
    for n in names:
        if n in seen:
            raise LayerbudgetError(f"option {n!r} is listed twice")
        seen.add(n)
        out.append(parse_option(n))
    return out
