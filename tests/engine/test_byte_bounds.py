"""Maps bounded in bytes as well as items: chunks of large items stay small messages, and an
ordered imap of large results keeps the notebook's memory flat however slowly it is consumed.

Chunk sizes are observed where the data arrives: the shared-memory segment a worker maps for a
chunk (or the notebook for a chunk's results) holds the whole chunk, so its size, read from
/proc/<pid>/maps (``tests/shm_tasks``), is the size of the message.
"""
from __future__ import annotations

import gc
import time

import numpy as np
import psutil
import pytest

from mpkit.engine._chunking import TARGET_CHUNK_BYTES
from tests import shm_tasks

MB = shm_tasks.MB
PAGE = 4096
#: RSS growth allowed to the notebook while it holds back results. Before the byte bounds it grew
#: by 450-600 MB here (the whole backlog); with them by about 65 MB. Generous: RSS is noisy.
RSS_GROWTH_BOUND = 250 * MB


def test_a_cheap_function_over_large_items_never_gets_a_chunk_over_the_cap(pool):
    arrays = [np.full(MB // 8, float(i)) for i in range(200)]
    out = pool.map(shm_tasks.where, arrays)  # cheap: time alone would make chunks of 50 MB
    assert [first for _, first in out] == [float(i) for i in range(200)]
    segments = [segment for segment, _ in out]
    assert all(segments), "some items did not travel through shared memory"
    assert max(segments) <= TARGET_CHUNK_BYTES + PAGE, \
        f"a chunk of {max(segments) / MB:.0f} MB was sent (cap {TARGET_CHUNK_BYTES / MB:.0f} MB)"


def test_large_results_of_small_items_come_back_in_messages_under_the_cap(pool):
    out = pool.map(shm_tasks.block, range(120), chunksize="auto")
    assert [float(r[0]) for r in out] == [float(i) for i in range(120)]
    segments = [shm_tasks.array_segment(r) for r in out]
    assert all(segments), "some results did not come back through shared memory"
    assert max(segments) <= TARGET_CHUNK_BYTES + PAGE, \
        f"a message of {max(segments) / MB:.0f} MB of results came back (cap {TARGET_CHUNK_BYTES / MB:.0f} MB)"


def _consume(results, pause: float) -> tuple[list[float], int]:
    """First values of the results, read one by one with a pause; and the peak RSS growth."""
    process = psutil.Process()
    gc.collect()
    base = peak = process.memory_info().rss
    firsts = []
    for i, result in enumerate(results):
        firsts.append(float(result[0]))
        del result
        if i % 8 == 0:
            peak = max(peak, process.memory_info().rss)
        time.sleep(pause)
    return firsts, peak - base


def test_an_ordered_imap_of_large_results_consumed_slowly_stays_flat(pool):
    firsts, growth = _consume(pool.imap(shm_tasks.block, range(1000)), pause=0.003)
    assert firsts == [float(i) for i in range(1000)]
    assert growth < RSS_GROWTH_BOUND, f"the notebook grew by {growth / MB:.0f} MB holding results back"


def test_results_waiting_for_a_slow_first_item_are_bounded_in_bytes(pool):
    firsts, growth = _consume(pool.imap(shm_tasks.block_slow_first, range(600)), pause=0)
    assert firsts == [float(i) for i in range(600)]
    assert growth < RSS_GROWTH_BOUND, f"the notebook grew by {growth / MB:.0f} MB holding results back"


@pytest.mark.parametrize("chunksize", ["auto", 1])
def test_a_generator_of_large_items_is_read_only_as_far_as_the_bounds_allow(pool, chunksize):
    produced = []

    def arrays():
        for i in range(60):
            produced.append(i)
            yield np.full(4 * MB // 8, float(i))

    ahead = []
    for consumed, first in enumerate(pool.imap(shm_tasks.first_value, arrays(), chunksize=chunksize)):
        assert first == float(consumed)
        ahead.append(len(produced) - consumed)
        time.sleep(0.02)  # a slow consumer: the input must wait for it, not pile up in memory
    assert len(produced) == 60
    # 64 MB of 4 MB items ahead of the caller, and the chunk being cut; before the byte bounds
    # the whole generator (240 MB) was read ahead.
    assert max(ahead) <= 20, f"{max(ahead)} items of 4 MB were read ahead of the caller"
