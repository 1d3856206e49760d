"""Data races in a launch that :mod:`.ptx_sim` runs: accesses a GPU may perform in either order.

The interpreter runs a CTA's warps in lockstep and the CTAs one after another, so it computes one
schedule; this checks that every other schedule the program allows reads the same bytes, and raises
:class:`DataRace` naming the first access that breaks it.

Shared memory, within a CTA, by barrier phase (``bar.sync`` starts the next): a warp's access conflicts
with another warp's in the same phase when either writes (two writes of the same bytes excepted). A
``cp.async`` writes its bytes when its warp waits for the copy's group (``cp.async.wait_group``/
``wait_all``); reading or rewriting them before that conflicts. ``wgmma`` reads its shared operands
until its warpgroup waits for the group (``wgmma.wait_group``), so a write to them before that
conflicts (after it, one by another warpgroup in the same phase); and as it reads through the async proxy, the bytes the generic proxy wrote (``st``,
``stmatrix``, ``cp.async``) need a ``fence.proxy.async`` after the write, by the writing warp or in a
later phase.

Global memory, between CTAs, by happens-before: a CTA's own order, ``bar.sync`` (what any thread did
before it, every thread comes after), and release/acquire at GPU scope: an ``atom``/``red``/``st``/``ld``
with ``.release``/``.acquire``/``.acq_rel``, or a relaxed one after (release) or before (acquire) the
thread's ``fence.acq_rel``/``fence.sc``/``membar.gl`` (a relaxed release takes the writes ordered
before that fence in its own thread, by its program order and the barriers before the fence); atomic
read-modify-writes continue the release sequence. A plain read or write of bytes another CTA wrote,
not ordered after that write, conflicts. :class:`Ordering` gives the interpreter these instructions.
Not checked: global accesses within one CTA, a write after another CTA's read, atomics among
themselves, the accumulator registers of a pending ``wgmma``.
"""

from __future__ import annotations

import bisect
import re

import numpy as np


def _spread(offs: np.ndarray, nbytes: int) -> np.ndarray:
    """The byte offsets of ``nbytes`` at each of ``offs``, flat."""
    return (offs.astype(np.int64)[:, None] + np.arange(nbytes)).ravel()


class DataRace(RuntimeError):
    """Two accesses to the same bytes that a GPU may perform in either order."""


def _join(a: dict, b: dict) -> dict:
    """Union of two publications: CTA -> (every thread's writes before this event, each thread's own limit)."""
    out = dict(a)
    for cta, (every, own) in b.items():
        if cta in out:
            every0, own0 = out[cta]
            out[cta] = (max(every0, every), np.maximum(own0, own))
        else:
            out[cta] = (every, own)
    return out


class RaceCheck:
    """Shadow state of one launch: called by the interpreter for every memory access and synchronization,
    raises :class:`DataRace`. ``threads`` per CTA, ``shared_bytes`` of shared memory, global buffer ``i``
    at ``(i + 1) << base_shift``."""

    def __init__(self, threads: int, shared_bytes: int, base_shift: int, sizes: list[int]):
        self.n, self.warps, self.size, self.shift = threads, threads // 32, max(shared_bytes, 1), base_shift
        self.sizes = sizes
        self.warp = np.arange(threads) // 32
        self.plain: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # buffer -> last writer per byte
        self.atomics: dict[int, list] = {}  # buffer -> (CTA, bytes, clock, thread per byte) per atomic
        self.locations: dict[tuple[int, int], dict] = {}  # (buffer, offset) -> its release sequence's publication
        self.sync_at: dict[int, set[int]] = {}  # buffer -> the offsets in locations
        self.cta = -1

    # --- per CTA ----------------------------------------------------------------------------------------

    def start_cta(self, cta: int, shared: np.ndarray) -> None:
        """A new program (``cta``: its index in the grid; ``shared``: its shared memory); nothing pending."""
        self.shared = shared
        self.cta, self.clock, self.phase, self.barriers = cta, 0, 0, [-1]
        s, w = self.size, self.warps
        self.w_warp = np.full(s, -1, np.int16)  # shared: last writer, its phase and clock
        self.w_phase = np.full(s, -1, np.int32)
        self.w_clock = np.zeros(s, np.int64)
        self.r_phase = np.full((w, s), -1, np.int32)  # shared: each warp's last read phase
        self.copy_warp = np.full(s, -1, np.int16)  # cp.async pending: warp and group
        self.copy_group = np.zeros(s, np.int32)
        self.copies = np.zeros(w, np.int64)  # groups committed per warp
        self.operand_group = np.full((max(w // 4, 1), s), -1, np.int32)  # wgmma reads pending, per warpgroup
        self.operand_phase = np.full((max(w // 4, 1), s), -1, np.int32)  # and the phase each finished in
        self.products = np.zeros(max(w // 4, 1), np.int64)
        self.proxy = np.full((w, 2), -1, np.int64)  # each warp's last fence.proxy.async: clock, phase
        self.fences: list[tuple[int, np.ndarray]] = []  # GPU-scope fences: clock, threads
        self.known: dict = {}  # what every thread of the CTA has acquired
        self.known_by: dict[int, dict] = {}  # what one thread has acquired since the last barrier
        self.pending: dict[int, dict] = {}  # relaxed reads of synchronizing locations, before a fence

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def barrier(self) -> None:
        self.barriers.append(self._tick())
        self.phase += 1
        for seen in self.known_by.values():
            self.known = _join(self.known, seen)
        self.known_by = {}

    # --- shared memory ----------------------------------------------------------------------------------

    def _bytes(self, offs: np.ndarray, nbytes: int, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Byte index and warp of every byte the active lanes access."""
        return _spread(offs[active], nbytes), np.repeat(self.warp[active], nbytes)

    def _raise(self, what: str, idx: np.ndarray, bad: np.ndarray) -> None:
        if bad.any():
            raise DataRace(f"{what} (shared byte {int(idx[bad][0])}, phase {self.phase})")

    def _check_read(self, idx: np.ndarray, warp: np.ndarray) -> None:
        self._raise("a read of bytes a cp.async has not been waited for", idx, self.copy_warp[idx] >= 0)
        other = (self.w_warp[idx] >= 0) & (self.w_warp[idx] != warp) & (self.w_phase[idx] == self.phase)
        self._raise("a read of bytes another warp wrote with no barrier between", idx, other)

    def _check_write(self, idx: np.ndarray, warp: np.ndarray, new: np.ndarray | None) -> None:
        self._raise("a write to bytes a cp.async has not been waited for", idx, self.copy_warp[idx] >= 0)
        self._raise("a write to bytes a wgmma may still read (before its wgmma.wait_group)", idx,
                    (self.operand_group[:, idx] >= 0).any(axis=0))
        read = self.r_phase[:, idx] == self.phase
        read[warp, np.arange(idx.size)] = False
        self._raise("a write to bytes another warp read with no barrier between", idx, read.any(axis=0))
        read = self.operand_phase[:, idx] == self.phase  # a finished wgmma: its own warpgroup waited for it
        read[warp // 4, np.arange(idx.size)] = False
        self._raise("a write to bytes another warpgroup's wgmma read with no barrier between", idx, read.any(axis=0))
        other = (self.w_warp[idx] >= 0) & (self.w_warp[idx] != warp) & (self.w_phase[idx] == self.phase)
        if new is not None:
            other &= self.shared[idx] != new
        self._raise("a write to bytes another warp wrote with no barrier between", idx, other)
        if idx.size:  # two warps of this one instruction writing the same byte
            order = np.lexsort((warp, idx))
            i, w = idx[order], warp[order]
            same = (i[1:] == i[:-1]) & (w[1:] != w[:-1])
            if new is not None:
                same &= new[order][1:] != new[order][:-1]
            self._raise("two warps write different values to the same bytes", i[1:], same)

    def shared_read(self, offs: np.ndarray, nbytes: int, active: np.ndarray) -> None:
        idx, warp = self._bytes(offs, nbytes, active)
        self._check_read(idx, warp)
        self.r_phase[warp, idx] = self.phase

    def shared_write(self, offs: np.ndarray, nbytes: int, values: np.ndarray, active: np.ndarray) -> None:
        """Before the store of ``values`` (per lane, little-endian)."""
        idx, warp = self._bytes(offs, nbytes, active)
        new = ((values[active][:, None] >> (8 * np.arange(nbytes, dtype=np.uint64))) & np.uint64(0xFF)).ravel()
        self._check_write(idx, warp, new.astype(np.uint8))
        self.w_warp[idx], self.w_phase[idx], self.w_clock[idx] = warp, self.phase, self._tick()

    def async_copy(self, offs: np.ndarray, nbytes: int, active: np.ndarray) -> None:
        idx, warp = self._bytes(offs, nbytes, active)
        self._check_write(idx, warp, None)
        self.copy_warp[idx], self.copy_group[idx] = warp, self.copies[warp]

    def copy_commit(self, active: np.ndarray) -> None:
        self.copies[np.unique(self.warp[active])] += 1

    def copy_wait(self, keep: int | None, active: np.ndarray) -> None:
        """``cp.async.wait_group keep`` (``None``: ``wait_all``) in the active lanes' warps: their older copies land."""
        clock = self._tick()
        for w in np.unique(self.warp[active]):
            limit = self.copies[w] - keep if keep is not None else self.copies[w] + 1
            done = (self.copy_warp == w) & (self.copy_group < limit)
            self.w_warp[done], self.w_phase[done], self.w_clock[done] = w, self.phase, clock
            self.copy_warp[done] = -1

    def proxy_fence(self, active: np.ndarray) -> None:
        self.proxy[np.unique(self.warp[active])] = (self._tick(), self.phase)

    def operand_read(self, group: int, offs: np.ndarray) -> None:
        """A ``wgmma`` of warpgroup ``group`` issued, reading shared bytes ``offs`` (any shape)."""
        idx = np.unique(offs.astype(np.int64).ravel())
        writer = self.w_warp[idx].astype(np.int64)
        mine = writer // 4 == group
        self._check_read(idx, np.where(mine, writer, -2))
        fence_clock, fence_phase = self.proxy[np.maximum(writer, 0)].T  # the writer's last fence: after the
        by_writer = (fence_clock > self.w_clock[idx]) & (mine | (fence_phase < self.phase))  # write, before a barrier
        clock, phase = self.proxy[4 * group]  # the issuing warpgroup's: after the write and a barrier
        by_reader = (clock > self.w_clock[idx]) & (phase > self.w_phase[idx])
        self._raise("a wgmma read of bytes plain stores wrote with no fence.proxy.async after them", idx,
                    (writer >= 0) & ~by_writer & ~by_reader)
        self.operand_group[group, idx] = self.products[group]  # free when the last group reading it is done

    def operand_commit(self, active: np.ndarray) -> None:
        self.products[np.unique(self.warp[active] // 4)] += 1

    def operand_wait(self, keep: int, active: np.ndarray) -> None:
        for g in np.unique(self.warp[active] // 4):
            row = self.operand_group[g]
            done = (row >= 0) & (row < self.products[g] - keep)
            self.operand_phase[g, done] = self.phase
            row[done] = -1

    # --- global memory ----------------------------------------------------------------------------------

    def _where(self, addr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = addr.astype(np.int64)
        return (a >> self.shift) - 1, a & ((1 << self.shift) - 1)

    def _ordered(self, thread: np.ndarray, cta: np.ndarray, clock: np.ndarray, writer: np.ndarray) -> np.ndarray:
        """Whether each earlier write (``cta``, ``clock``, ``writer`` thread) is ordered before this CTA's
        ``thread`` now (writes of this CTA are not checked)."""
        ok = cta == self.cta
        for t in np.unique(thread[~ok]).tolist():  # what each thread knows
            seen = _join(self.known, self.known_by.get(t, {}))
            for c in np.unique(cta[~ok & (thread == t)]).tolist():
                sel = ~ok & (thread == t) & (cta == c)
                if c in seen:
                    every, own = seen[c]
                    ok[sel] = (clock[sel] < every) | (clock[sel] < own[writer[sel]])
        return ok

    def _bytes_of(self, addr: np.ndarray, nbytes: int, active: np.ndarray, only: tuple = ()):
        """Per buffer (of those in the dicts ``only``, if given): byte offsets and the thread accessing each."""
        lanes = np.nonzero(active)[0]
        buf, off = self._where(addr[lanes])
        for b in np.unique(buf).tolist():
            if only and not any(b in d for d in only):
                continue
            sel = buf == b
            yield b, _spread(off[sel], nbytes), np.repeat(lanes[sel], nbytes)

    def _check_global(self, b: int, idx: np.ndarray, thread: np.ndarray, what: str, plain_only: bool = False) -> None:
        """``what`` (an access of bytes ``idx`` of buffer ``b`` by ``thread``) comes after every write to them
        (``plain_only``: every plain write)."""
        earlier = []
        if b in self.plain:
            cta, clock, writer = (a[idx] for a in self.plain[b])
            earlier.append((cta >= 0, cta, clock, writer))
        for cta, at, clock, writer in () if plain_only else self.atomics.get(b, ()):
            hit = np.isin(idx, at)
            if hit.any():
                pos = np.searchsorted(at, idx[hit])
                full = np.full(idx.size, cta)
                cl, wr = np.zeros(idx.size, np.int64), np.zeros(idx.size, np.int64)
                cl[hit], wr[hit] = clock, writer[pos]
                earlier.append((hit, full, cl, wr))
        for hit, cta, clock, writer in earlier:
            bad = hit & ~self._ordered(thread, cta, clock, writer)
            if bad.any():
                raise DataRace(f"{what} global bytes program {int(cta[bad][0])} wrote, not ordered after that "
                               f"write (buffer {b}, byte {int(idx[bad][0])})")

    def global_access(self, write: bool, addr: np.ndarray, nbytes: int, active: np.ndarray) -> None:
        """A plain global read or write of ``nbytes`` per active lane."""
        if not write and not self.plain and not self.atomics:
            return
        clock = self._tick()
        for b, idx, thread in self._bytes_of(addr, nbytes, active, () if write else (self.plain, self.atomics)):
            if b in self.plain or b in self.atomics:
                self._check_global(b, idx, thread, "a write to" if write else "a read of")
            if write:
                for at in self.sync_at.get(b, set()) & set(np.unique(idx).tolist()):  # a plain store ends a
                    del self.locations[b, at]  # release sequence
                    self.sync_at[b].discard(at)
                if b not in self.plain:
                    size = self.sizes[b]  # each byte's last plain writer: CTA (-1: none), clock, thread
                    self.plain[b] = (np.full(size, -1, np.int32), np.zeros(size, np.int64), np.zeros(size, np.int32))
                arrays = self.plain[b]
                arrays[0][idx], arrays[1][idx], arrays[2][idx] = self.cta, clock, thread

    def atomic_access(self, addr: np.ndarray, nbytes: int, active: np.ndarray) -> None:
        """An atomic or strong write of ``nbytes`` per active lane: after every plain write to the bytes;
        unordered with other atomics, so each is kept for the plain accesses after it."""
        clock = self._tick()
        for b, idx, thread in self._bytes_of(addr, nbytes, active):
            if b in self.plain:
                self._check_global(b, idx, thread, "an atomic on", plain_only=True)
            at, first = np.unique(idx, return_index=True)
            self.atomics.setdefault(b, []).append((self.cta, at, clock, thread[first]))

    def gpu_fence(self, active: np.ndarray) -> None:
        """``fence.acq_rel``/``fence.sc``/``membar`` at GPU scope or wider in the active lanes."""
        self.fences.append((self._tick(), active.copy()))
        for t in np.nonzero(active)[0].tolist():
            if t in self.pending:
                self.known_by[t] = _join(self.known_by.get(t, {}), self.pending.pop(t))

    def _publication(self, lane: int, at: int) -> dict:
        """What thread ``lane`` releases at clock ``at``: every write of this CTA before the last barrier
        before ``at``, the thread's own before ``at``, and what the thread has acquired."""
        every = self.barriers[bisect.bisect_left(self.barriers, at) - 1]
        own = np.full(self.n, -1, np.int64)
        own[lane] = at
        return _join(_join(self.known, self.known_by.get(lane, {})), {self.cta: (every, own)})

    def synchronize(self, addr: int, lane: int, sem: str, scope: str, rmw: bool, write: bool) -> None:
        """What an atomic read-modify-write (``rmw``), or a strong load or store (``write``), by thread ``lane``
        at ``addr`` orders, by its memory order ``sem`` (``relaxed``/``acquire``/``release``/``acq_rel``/``sc``)
        and ``scope`` (``cta``/``gpu``/``sys``): releases join the location's release sequence (a store
        starts a new one), acquires what it holds (a relaxed read: at the thread's next fence)."""
        if scope == "cta":
            return
        buf, off = (int(v[0]) for v in self._where(np.array([addr])))
        key, clock = (buf, off), self._tick()
        if write or rmw:
            if sem in ("release", "acq_rel", "sc"):
                out = self._publication(lane, clock)
            else:  # relaxed: released by the thread's last fence before it, if any
                fenced = [c for c, threads in self.fences if threads[lane]]
                out = self._publication(lane, fenced[-1]) if fenced else {}
            self.locations[key] = _join(self.locations.get(key, {}), out) if rmw else out
            self.sync_at.setdefault(buf, set()).add(off)
        if rmw or not write:
            into = self.known_by if sem in ("acquire", "acq_rel", "sc") else self.pending
            into[lane] = _join(into.get(lane, {}), self.locations.get(key, {}))


class Ordering:
    """Barriers, fences and memory-ordered global accesses for :class:`~.ptx_sim.Machine` (which provides ``n``,
    ``races``, ``get``): the CTA runs in lockstep, so each only tells :class:`RaceCheck` what it orders."""

    def _sync(self, op: str, a: tuple[str, ...], active: np.ndarray) -> None:
        """``bar.sync`` of the whole CTA, ``fence``, ``membar``."""
        if op.startswith(("bar.warp", "fence.mbarrier_init")):
            return
        if op.startswith(("bar.sync", "barrier.sync")):
            if len(a) > 1 and int(self.get(a[1])[0]) != self.n:
                raise NotImplementedError(f"{op} of {a[1]} threads in a CTA of {self.n}")
            return self.races and self.races.barrier()
        if op.startswith(("bar", "barrier")):
            raise NotImplementedError(f"instruction {op!r}")
        if not self.races:
            return
        if op.startswith("fence.proxy.async"):
            return self.races.proxy_fence(active)
        if op in ("membar.gl", "membar.sys") or re.fullmatch(r"fence\.(sc|acq_rel)\.(gpu|sys)", op):
            return self.races.gpu_fence(active)

    def _global_order(self, root: str, op: str, addr: np.ndarray, nbytes: int, active: np.ndarray) -> None:
        """A global access, to the race check: plain, or strong with a memory order (``.acquire``, ...)."""
        parts = op.split(".")
        sem = next((p for p in parts if p in ("relaxed", "acquire", "release", "acq_rel", "sc", "volatile")), None)
        if sem is None and root in ("ld", "st"):
            return self.races.global_access(root == "st", addr, nbytes, active)
        scope = next((p for p in parts if p in ("cta", "cluster", "gpu", "sys")), "gpu")
        if root != "ld":
            self.races.atomic_access(addr, nbytes, active)
        for lane in np.nonzero(active)[0].tolist():
            self.races.synchronize(int(addr[lane]), lane, "relaxed" if sem in (None, "volatile") else sem, scope,
                                   rmw=root in ("atom", "red"), write=root == "st")
