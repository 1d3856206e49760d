"""The race check's rules (:mod:`layerbudget.kernels.ptx_races`), one schedule-dependent access at a time.

``test_kernels_ptx.py`` runs the check on compiled kernels and on edits of their PTX; here each rule is
driven directly, with the accesses a CTA of two warps (eight for ``wgmma``) or two CTAs would make."""

from __future__ import annotations

import numpy as np
import pytest

from layerbudget.kernels.ptx_races import DataRace, RaceCheck

SHIFT = 36


def _check(warps: int = 2, shared: int = 64, sizes=(64, 4)) -> RaceCheck:
    races = RaceCheck(32 * warps, shared, SHIFT, list(sizes))
    races.start_cta(0, np.zeros(shared, np.uint8))
    return races


def _lanes(races: RaceCheck, warp: int, lanes: int = 1) -> np.ndarray:
    on = np.zeros(races.n, bool)
    on[32 * warp:32 * warp + lanes] = True
    return on


def _at(offset: int, n: int) -> np.ndarray:
    return np.full(n, offset, np.int64)


def test_shared_memory_needs_a_barrier_between_warps():
    races = _check()
    races.shared_write(_at(0, 64), 4, np.full(64, 7, np.uint64), _lanes(races, 0))
    races.shared_read(_at(0, 64), 4, _lanes(races, 0))  # the writing warp itself: in order
    with pytest.raises(DataRace, match="another warp wrote with no barrier"):
        races.shared_read(_at(0, 64), 4, _lanes(races, 1))
    races.barrier()
    races.shared_read(_at(0, 64), 4, _lanes(races, 1))
    with pytest.raises(DataRace, match="another warp read with no barrier"):
        races.shared_write(_at(0, 64), 4, np.full(64, 9, np.uint64), _lanes(races, 0))


def test_two_warps_may_write_the_same_value_but_not_different_ones():
    races = _check()
    both = _lanes(races, 0) | _lanes(races, 1)
    races.shared_write(_at(8, 64), 2, np.full(64, 5, np.uint64), both)
    races.shared[8:10] = [5, 0]  # the store itself (the interpreter's)
    races.shared_write(_at(8, 64), 2, np.full(64, 5, np.uint64), _lanes(races, 1))  # same bytes again: fine
    values = np.where(np.arange(64) < 32, 1, 2).astype(np.uint64)
    with pytest.raises(DataRace, match="two warps write different values"):
        races.shared_write(_at(16, 64), 2, values, both)


def test_cp_async_bytes_land_at_the_wait_for_their_group():
    races = _check()
    races.async_copy(_at(0, 64), 16, _lanes(races, 0))
    races.copy_commit(_lanes(races, 0))
    races.async_copy(_at(16, 64), 16, _lanes(races, 0))
    races.copy_commit(_lanes(races, 0))
    with pytest.raises(DataRace, match="cp.async has not been waited for"):
        races.shared_read(_at(0, 64), 4, _lanes(races, 0))
    races.copy_wait(1, _lanes(races, 0))  # the older group lands, the newer one may not have
    races.shared_read(_at(0, 64), 4, _lanes(races, 0))
    with pytest.raises(DataRace, match="cp.async has not been waited for"):
        races.shared_write(_at(16, 64), 4, np.zeros(64, np.uint64), _lanes(races, 0))
    with pytest.raises(DataRace, match="another warp wrote"):  # landed, but for warp 0 only
        races.shared_read(_at(0, 64), 4, _lanes(races, 1))


def test_wgmma_needs_a_proxy_fence_and_holds_its_operands_until_waited_for():
    races = _check(warps=8, shared=256)
    all_threads = np.ones(races.n, bool)
    races.shared_write(_at(0, 256), 16, np.full(256, 3, np.uint64), _lanes(races, 5))  # a plain store
    races.barrier()
    with pytest.raises(DataRace, match="no fence.proxy.async"):
        races.operand_read(0, np.arange(16))
    races.proxy_fence(all_threads)  # after the barrier, by the reading warpgroup
    races.operand_read(0, np.arange(16))
    races.operand_commit(all_threads)
    with pytest.raises(DataRace, match="a wgmma may still read"):
        races.shared_write(_at(0, 256), 4, np.zeros(256, np.uint64), _lanes(races, 1))
    races.operand_wait(0, all_threads)
    races.shared_write(_at(0, 256), 4, np.zeros(256, np.uint64), _lanes(races, 1))  # its own warpgroup waited
    with pytest.raises(DataRace, match="another warpgroup's wgmma read"):
        races.shared_write(_at(4, 256), 4, np.zeros(256, np.uint64), _lanes(races, 6))


def _address(buf: int, offset: int) -> int:
    return ((buf + 1) << SHIFT) + offset


def _global(races: RaceCheck, write: bool, thread: int, buf: int = 0, offset: int = 0) -> None:
    on = np.zeros(races.n, bool)
    on[thread] = True
    races.global_access(write, np.full(races.n, _address(buf, offset), np.uint64), 4, on)


def _arrive(races: RaceCheck, sem: str = "acq_rel", scope: str = "gpu", thread: int = 0) -> None:
    """The split-K counter: one thread's atomic add on buffer 1."""
    on = np.zeros(races.n, bool)
    on[thread] = True
    races.atomic_access(np.full(races.n, _address(1, 0), np.uint64), 4, on)
    races.synchronize(_address(1, 0), thread, sem, scope, rmw=True, write=False)


@pytest.mark.parametrize(("barrier", "sem", "scope", "fence", "ordered"), [
    (True, "acq_rel", "gpu", False, True),
    (False, "acq_rel", "gpu", False, False),  # thread 5's write is not before thread 0's release
    (True, "acq_rel", "cta", False, False),   # CTA scope orders nothing between programs
    (True, "release", "gpu", False, False),   # the reader never acquires
    (True, "relaxed", "gpu", True, False),    # fence only after the relaxed release: thread 5 unpublished
])
def test_split_k_reads_come_after_the_writes_they_read(barrier, sem, scope, fence, ordered):
    races = _check()
    _global(races, True, thread=5)  # program 0 writes its partial sums
    if barrier:
        races.barrier()
    _arrive(races, sem, scope)
    races.start_cta(1, np.zeros(64, np.uint8))
    _arrive(races, sem, scope)
    if fence:
        races.gpu_fence(np.ones(races.n, bool))
    races.barrier()  # the count reaches every thread of program 1
    if ordered:
        _global(races, False, thread=9)
    else:
        with pytest.raises(DataRace, match="program 0 wrote, not ordered"):
            _global(races, False, thread=9)


def test_a_relaxed_read_acquires_at_the_next_fence_and_a_plain_store_ends_the_release_sequence():
    races = _check()
    _global(races, True, thread=0)
    _arrive(races, "release")
    races.start_cta(1, np.zeros(64, np.uint8))
    _arrive(races, "relaxed")
    with pytest.raises(DataRace):
        _global(races, False, thread=0)  # not yet: the relaxed read acquires at a fence
    races.gpu_fence(np.ones(races.n, bool))
    _global(races, False, thread=0)
    assert (1, 0) in races.locations
    _global(races, True, thread=0, buf=1)  # program 1 resets the counter with a plain store
    assert (1, 0) not in races.locations  # what it released is gone with the release sequence
    races.start_cta(2, np.zeros(64, np.uint8))
    with pytest.raises(DataRace, match="program 1 wrote"):  # and another program's atomic on it races
        _arrive(races, "acq_rel")
