"""Small models for tests/recipes/test_inference.py, importable by name in worker processes."""
from __future__ import annotations

import os
import time


class BatchSizes:
    """Each output: (input, size of the batch it came in, pid of the process that built the model)."""

    def __init__(self, seconds: float = 0.0):
        self.pid = os.getpid()
        self.seconds = seconds

    def __call__(self, batch):
        if self.seconds:
            time.sleep(self.seconds)
        return [(x, len(batch), self.pid) for x in batch]


class Slow(BatchSizes):
    def __init__(self):
        super().__init__(seconds=0.1)


class DropsOne:
    """A broken model: one output fewer than its inputs."""

    def __call__(self, batch):
        return [x * 2 for x in batch][:-1]
