"""The ledger of a running pipeline: every input item (a "root") from the moment it is taken in
until it ends, in exactly one way.

    taken in ──► live[root] = outputs on their way ──► the last one ends ──► completed (a result came out)
    (submitted)   a many= stage adds its fan-out;                            failed    (some stage raised)
                  a drop or a failure ends one                               dropped   (no result, no error)
                                                  the flow stops first ───► cancelled (stop, interrupt, error)

Each end is counted where it happens, and ``pending`` is the number of roots in ``live``: so
``submitted == completed + failed + dropped + cancelled + pending`` is a check that a lost or
twice-ended item breaks, not a definition. Only the router thread writes here.

Outputs stay pickled here (``Item``): a run's results are decoded by ``Flow.result_list`` in the
caller's thread, a service's by its Future when ``result()`` is first asked for, a stream's
(``imap``) by the consumer's loop, which takes ``streamed`` entries as they come:
``(OUTPUT, key, value)`` for each output and, when it must know (ordered, or failures collected),
``(ENDED, root, failure or None)`` when a root ends; or, where nothing else is asked (no futures,
no fan-out, no ends), ``(OUTPUTS, values, nbytes)`` for a segment of outputs that each ended a root.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import Any

from ._errors import Failure

#: Failures a service keeps for display (``svc.failures``, the dashboard); older ones are only
#: counted. A blocking ``run()`` keeps them all: they are part of its result. 1,000 is more than a
#: person reads and, with tracebacks of a few KB each, a few MB at most in a kernel that runs for days.
RECENT_FAILURES = 1000
#: Tags of ``Ledger.streamed`` entries.
OUTPUT, OUTPUTS, ENDED = "output", "outputs", "ended"


class Encoded:
    """A Future's value still pickled: the Future decodes it when ``result()`` asks (the service's
    ``_ServiceFuture``), in the caller's thread, not the router's."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Ledger:
    def __init__(self, *, many: bool, keep_results: bool, keep_all_failures: bool, stream: bool = False,
                 ends: bool = False):
        self.many = many                 # a root's result is the list of its outputs
        self.keep_results = keep_results  # run(): every output, for the ResultList
        self.streamed: list | None = [] if stream else None  # imap(): entries for the consumer
        self.ends = ends                 # and ENDED entries too
        self.submitted = self.completed = self.failed = self.dropped = self.cancelled = 0
        self.delivered = 0               # outputs that came out of the last stage
        self.live: dict[int, int] = {}   # root -> outputs still on their way
        self.outputs: dict[int, list] = {}   # root -> outputs so far (roots with a future)
        self.produced: set[int] = set()      # roots with at least one output (run())
        self.failures_of: dict[int, Failure] = {}
        self.futures: dict[int, Future] = {}
        #: Futures their callers cancelled, as counted by them (``Service``'s futures): while 0,
        #: no item need be looked at to see whether it is still wanted
        self.cancels = 0
        self.results: list = []          # (key, value), run() only
        self.failures: list[Failure] | deque[Failure] = [] if keep_all_failures else deque(maxlen=RECENT_FAILURES)
        self.cancelled_roots: list[int] = []  # run() only: MapInterrupted.pending

    def take(self, future: Future | None = None) -> int:
        """A new root; its number is its position in the input."""
        root = self.submitted
        self.submitted += 1
        self.live[root] = 1
        if future is not None:
            self.futures[root] = future
        return root

    def take_many(self, count: int) -> int:
        """``count`` new roots without futures; the first one's number."""
        start = self.submitted
        self.submitted += count
        self.live.update(dict.fromkeys(range(start, start + count), 1))
        return start

    @property
    def culling(self) -> bool:
        """Whether some caller cancelled a Future: items must be looked at one by one (``unwanted``)."""
        return bool(self.cancels and self.futures)

    def unwanted(self, key: tuple) -> bool:
        """Whether the caller cancelled the Future of ``key``'s item (then it need not run)."""
        future = self.futures.get(key[0])
        return future is not None and future.cancelled()

    def fan_out(self, root: int, outputs: int) -> None:
        """One output of ``root`` became ``outputs`` (> 0) outputs."""
        self.live[root] += outputs - 1

    def output(self, key: tuple, value: Any) -> None:
        """An output of ``key[0]`` came out of the last stage."""
        root = key[0]
        self.delivered += 1
        if self.keep_results:
            self.results.append((key, value))
        elif self.streamed is not None:
            self.streamed.append((OUTPUT, key, value))
        if root in self.futures:
            self.outputs.setdefault(root, []).append(value)
        elif self.many:
            self.produced.add(root)
        self._one_ended(root, True)

    def deliver(self, keys: list, values: list, nbytes: int) -> None:
        """Outputs that came out of the last stage together: as ``output`` for each, in one go
        where each ends its root and nothing waits for it (no future, no fan-out, no ends)."""
        if self.futures or self.many or self.ends:
            for key, value in zip(keys, values):
                self.output(key, value)
            return
        count = len(keys)
        self.delivered += count
        self.completed += count
        if self.keep_results:
            self.results.extend(zip(keys, values))
        elif self.streamed is not None:
            self.streamed.append((OUTPUTS, values, nbytes))
        live = self.live
        for key in keys:
            del live[key[0]]

    def lost(self, key: tuple, failure: Failure | None = None) -> None:
        """An output of ``key[0]`` was dropped, failed (then the root fails), or is not wanted."""
        if failure is not None:
            self.failures_of.setdefault(key[0], failure)
        self._one_ended(key[0], False)

    def _one_ended(self, root: int, produced: bool) -> None:
        left = self.live[root] - 1
        if left:
            self.live[root] = left
            return
        del self.live[root]
        failure = self.failures_of.pop(root, None) if self.failures_of else None
        future = self.futures.pop(root, None) if self.futures else None
        outputs = self.outputs.pop(root, None) if future is not None else None
        if outputs is not None:
            produced = True
        if self.produced and root in self.produced:  # many=: an earlier output came out
            self.produced.discard(root)
            produced = True
        if self.ends:
            self.streamed.append((ENDED, root, failure))
        if future is not None and self.cancels and future.cancelled():  # by its caller: its outcome goes nowhere
            self.cancelled += 1
        elif failure is not None:
            self.failed += 1
            self.failures.append(failure)
            _resolve(future, exception=failure.exception)
        elif not produced:
            self.dropped += 1
            _resolve(future, value=None)
        else:
            self.completed += 1
            if future is not None:
                _resolve(future, value=Encoded(outputs if self.many else (outputs or [None])[0]))

    def cancel_all(self, error: BaseException | None) -> None:
        """The flow stopped: every live root is cancelled (its future is cancelled, or gets the
        error that stopped the flow), unless one of its outputs failed already: then it failed."""
        for root in sorted(self.live):
            future = self.futures.pop(root, None)
            failure = self.failures_of.get(root)
            if self.ends:
                self.streamed.append((ENDED, root, failure))
            if failure is not None:  # one of its outputs failed already: the item failed
                self.failed += 1
                self.failures.append(failure)
                _resolve(future, exception=failure.exception)
                continue
            self.cancelled += 1
            if self.keep_results:
                self.cancelled_roots.append(root)
            if future is not None:
                if error is None:
                    future.cancel()
                else:
                    _resolve(future, exception=error)
        self.live.clear()
        self.outputs.clear()
        self.produced.clear()
        self.failures_of.clear()

    @property
    def pending(self) -> int:
        return len(self.live)


def _resolve(future: Future | None, value: Any = None, exception: BaseException | None = None) -> None:
    if future is None:
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass  # the caller cancelled it: the outcome has nobody to go to
