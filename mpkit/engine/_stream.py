"""``Pipeline.imap``: a pipeline's results streamed to the caller's loop, in flat memory.

    the caller's thread (its for loop)                          the router thread
    ──────────────────────────────────                          ─────────────────
    next(source) ─► flow.put (pickled) ─► stage 0 ... last stage ─► ledger.streamed ─► flow.outlet [cond]
      only while the backlog is under its bounds                                             │
    yield the value (unpickled here) ◄── Backlog: results not yet yielded ◄──────────────────┘
                                         (ordered: held until the items before them ended)

One thread reads the source and yields the results, as ``run()`` does: a kernel interrupt ends
both, and a result waits for the loop only while ``next(source)`` itself blocks. The source is
read only while the backlog holds fewer than the first stage's ``maxsize`` results and
``RESULTS_BYTES``; then only what the stages' channels hold is inside. Leaving the loop (break,
an exception, the generator closed or collected) stops the pipeline: what is inside is cancelled.
"""
from __future__ import annotations

import pickle
from collections import deque
from typing import Any, Iterator

from ._errors import Failure
from ._flow import Flow, FlowEnded
from ._interrupts import held_interrupts
from ._ledger import ENDED, OUTPUT, OUTPUTS
from ._item import decoded, size, undecodable

#: Bytes of results a stream keeps for its loop before it stops reading the source. Enough for
#: the stages to go on while the loop works on one result; small enough that a slow loop over
#: results of many MB keeps the notebook's memory flat. (An ordered stream waiting for one slow
#: item holds the results after it here, then stops taking items.)
RESULTS_BYTES = 64 << 20
#: How long the loop waits for a result before it looks at the source again (s): short, so that
#: an interrupt lands at once.
POLL = 0.1


class Backlog:
    """Results taken from the router, not yet yielded; in input order if ``ordered``."""

    def __init__(self, ordered: bool, collect: bool):
        self.ordered, self.collect = ordered, collect
        self.ready: deque = deque()          # values (or Failures) to yield, in their order
        self.held: dict[int, list] = {}      # ordered: root -> its outputs, (key, value)
        self.ended: dict[int, Failure | None] = {}  # ordered: roots ended, not yet released
        self.next_root = 0
        self.count = self.nbytes = 0         # results in the backlog (bytes counted per segment)

    def add(self, entries: list) -> None:
        for entry in entries:
            if entry[0] is OUTPUTS:  # never when ordered: the ledger sends each output then
                _, values, nbytes = entry
                self.count += len(values)
                self.nbytes += nbytes
                self.ready.extend(values)
            elif entry[0] is OUTPUT:
                _, key, value = entry
                self.count += 1
                self.nbytes += size(value)
                if self.ordered:
                    self.held.setdefault(key[0], []).append((key, value))
                else:
                    self.ready.append(value)
            elif entry[0] is ENDED:
                _, root, failure = entry
                if self.ordered:
                    self.ended[root] = failure
                elif failure is not None and self.collect:
                    self.ready.append(failure)
        if self.ordered:
            while self.next_root in self.ended:
                root = self.next_root
                failure = self.ended.pop(root)
                outputs = self.held.pop(root, ())
                self.ready.extend(v for _, v in sorted(outputs, key=lambda kv: kv[0]))
                if failure is not None and self.collect:
                    self.ready.append(failure)
                self.next_root += 1

    def pop(self) -> Any:
        value = self.ready.popleft()
        cls = value.__class__
        if cls is Failure:
            return value
        self.count -= 1
        if cls is bytearray:  # a result's pickle, the usual case
            self.nbytes -= len(value)
            try:
                return pickle.loads(value)
            except Exception as exc:  # noqa: BLE001 - any unpickling error, with its reason
                raise undecodable(exc) from exc
        self.nbytes -= size(value)
        try:
            return decoded(value)
        except Exception as exc:  # noqa: BLE001 - any unpickling error, with its reason
            raise undecodable(exc) from exc

    def full(self, items: int) -> bool:
        return self.count >= items or self.nbytes >= RESULTS_BYTES


def stream(flow: Flow, source: Iterator, *, ordered: bool, collect: bool) -> Iterator:
    """The results of ``flow`` over ``source`` (see the module docstring)."""
    backlog = Backlog(ordered, collect)
    bound = flow.stages[0].spec.maxsize
    exhausted = False
    put, outlet, ready, pop = flow.put, flow.outlet, backlog.ready, backlog.pop
    flow.start()
    try:
        while True:
            # The hot path is one look (results came, the source is done, or the backlog full),
            # then one item in; a flow that ended meanwhile refuses it (FlowEnded).
            if exhausted or outlet or backlog.full(bound):
                wait = exhausted or backlog.full(bound)
                backlog.add(flow.take_outlet(POLL if wait else 0))
                while ready:
                    yield pop()
                if not flow.running:
                    backlog.add(flow.take_outlet(0))  # what the router handed over as it ended
                    while ready and flow.fatal is None:
                        yield pop()
                    if flow.fatal is not None:
                        raise flow.fatal
                    return
                if exhausted or backlog.full(bound):
                    continue  # nothing to read now: wait for results
            try:
                put(next(source))
            except StopIteration:
                exhausted = True
                flow.close_input()
            except FlowEnded:
                exhausted = True  # a stage failed or cannot run: the router ends, flow.fatal says why
    except BaseException as exc:
        if not isinstance(exc, (GeneratorExit, KeyboardInterrupt)) and flow.running:
            flow.fail(exc)  # the source raised: the run ends with its error
            flow.wait_quietly()
        raise
    finally:
        if flow.running:
            with held_interrupts():
                flow.stop()
                flow.wait_quietly()
