"""How many items go into one message to a worker.

Sending an item costs a pickling and a pipe write however small the item is; sending a chunk of
them costs about the same per chunk. Big chunks amortize that cost; small chunks keep every
worker busy to the end. ``ChunkSizer`` measures the time per item from the chunks that come back
and aims each chunk at ``TARGET_CHUNK_SECONDS`` of work, capped so that the tail of a map of known
length is still shared among the workers.
"""
from __future__ import annotations

import math

#: Work per chunk the sizer aims at. The fixed cost of a chunk (two pickles, two pipe writes, a
#: few dict operations) is 50-100 us, so 20 ms keeps it under 0.5% while a worker that gets the
#: last chunk finishes at most ~20 ms after the others.
TARGET_CHUNK_SECONDS = 0.02
#: Chunks in flight are cut into about this many pieces per worker for the remaining items, the
#: same tail balance as ``multiprocessing.Pool.map``'s default chunksize.
TAIL_SPLIT = 4
#: Bound on a chunk when the total is unknown (a generator): keeps imap's memory flat.
MAX_CHUNK = 10_000
#: The tail split never cuts a chunk below this much work: a chunk of tiny tasks costs more to
#: send than to run, and a few milliseconds of imbalance at the end cost less than many chunks.
MIN_CHUNK_SECONDS = 0.002


class ChunkSizer:
    def __init__(self, chunksize: int | str, workers: int, total: int | None,
                 seconds_per_item: float | None = None):
        if chunksize != "auto" and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be 'auto' or a positive int, not {chunksize!r}")
        self.fixed = None if chunksize == "auto" else chunksize
        self.workers = workers
        self.total = total
        #: measured time per item; a warm pool passes what the last map of the same function saw
        self.seconds_per_item: float | None = seconds_per_item

    def observe(self, items: int, seconds: float) -> None:
        """Feed back a chunk's compute time as measured in the worker."""
        if items <= 0:
            return
        sample = max(seconds / items, 1e-8)
        old = self.seconds_per_item
        self.seconds_per_item = sample if old is None else 0.7 * old + 0.3 * sample

    def next_size(self, fed: int) -> int:
        """Size of the next chunk, given how many items were already cut into chunks."""
        if self.fixed is not None:
            return self.fixed
        if self.seconds_per_item is None:
            return 1  # nothing measured yet: a long task must not sit behind others in one chunk
        size = TARGET_CHUNK_SECONDS / self.seconds_per_item
        if self.total is not None:
            remaining = max(self.total - fed, 1)
            tail = max(remaining / (self.workers * TAIL_SPLIT), MIN_CHUNK_SECONDS / self.seconds_per_item)
            size = min(size, math.ceil(tail))
        else:
            size = min(size, MAX_CHUNK)
        return max(1, int(size))
