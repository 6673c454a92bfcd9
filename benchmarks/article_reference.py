"""Reference: a port of the article's A -> B -> C asynchronous inference system, bounded and measurable.

The article ("python多进程及通信实现异步任务需求", section 3) glues three module processes with a
global dict of named multiprocessing Queues (``WholeQueue``):

  A (network)     a sender process puts request ids round-robin into B's queues ``B_{i % 2}``;
                  a receiver process takes results from queue ``A``.
  B (processing)  b_pool_size = 2 component processes, each reading its own queue, doing the
                  work, putting ``'component_' + str(info)`` into C's queue ``C_{info % 6}``.
  C (inference)   c_pool_size = 6 receiver processes put ``'receive_' + info`` into one cache
                  queue; a cache process batches (flush when it holds more than 128 items, or when
                  more than 1 s has passed since the last flush, looking at the clock only when an
                  item arrives); a predict process builds the model inside itself and predicts each
                  batch; module C's own process forwards every result, one put per item, to ``A``.

Kept as in the article: the global queue dict and its names, the process tree (A, B, C each a
Process that starts its own child processes), round-robin ``i % pool_size`` routing, one
``Queue.put``/``get`` per item on every hop (a whole batch per put between cache, predict and
C), the 6 C receivers, the cache's ">128 items or >1 s since the last flush, clock read on
arrival" rule, and one predict process that builds the model inside itself.

Changed, only to make it bounded and measurable:

- The article's fixed sleeps are replaced by the benchmark's per-item work: ``time.sleep(0.001)``
  per sent item in ``A.send`` is removed (the sender sends as fast as it can), ``time.sleep(0.01)``
  per item in ``B.component`` becomes ``preprocess(info, work.pre_iters)`` (CPU, or nothing), and
  ``time.sleep(random.uniform(0.1, 0.5))`` per batch in ``predict`` becomes the model's own CPU
  cost (``Model(base_iters, item_iters)``). Left in, the sleeps would set the throughput by
  themselves (at most 1,000 items/s from the sender's sleep, 200 items/s from B's two components,
  one batch per 0.1-0.5 s) and the benchmark would measure ``time.sleep``, not the system.
- The sender sends exactly ``n_items`` ids, then one sentinel (None) per B queue. Every stage
  passes the end on: a B component puts a sentinel into each of the 6 C queues; a C receiver ends
  after one sentinel from each B component and puts one into the cache queue; the cache flushes
  what it holds after all 6 and ends; predict and C's forwarder pass it to ``A``; the receiver ends.
  Every process returns and is joined.
- The receiver collects the results (instead of printing each) and reports their count and a
  checksum of the ids on an extra ``report`` queue, as do the sender (its send times) and predict
  (its batch sizes): the main process reads these to check the run and time its flow.
- The model prefixes ``'modelpredict_'`` itself (the shared ``Model`` of _pipeline_tasks, also used
  by the mpkit side), so predict does not add it again.
- Processes start with forkserver (spawn off Linux), never fork; prints of pids are left out.

``run_reference(n_items, work) -> (seconds, results_count, peak_rss_bytes)``: seconds from starting
the three module processes to the receiver holding the last result (start-up included, as in a
blocking ``pipe.run``, which starts its workers and returns when it holds every result; the
joining of every process is checked after that, and its time kept in ``LAST_RUN``); the peak of
the total resident memory of this process + all the reference's processes, sampled every 0.1 s.
``LAST_RUN`` holds details of the last run: the flow time from the first send to the last result,
batch sizes, and the CPU time of the processes that the modules start, as last sampled.
Note: under forkserver each module process, when it starts its own children, starts a forkserver
of its own (multiprocessing does not pass the main one down), as the article's design implies.
Run alone: ``python benchmarks/article_reference.py``.
"""
# The article's own spelling is kept in the ported classes ('B_%d' % i, dict()):
# ruff: noqa: UP031, C408
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Children import this module and the tasks by name: the repo root must be on their path.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

from benchmarks._pipeline_tasks import Model, Work, preprocess

START_METHOD = "forkserver" if sys.platform.startswith("linux") else "spawn"
_ctx = mp.get_context(START_METHOD)
Process = _ctx.Process
Queue = _ctx.Queue

STOP = None  # the end-of-stream sentinel, passed from stage to stage
B_POOL_SIZE = 2
C_POOL_SIZE = 6
LAST_RUN: dict = {}


class WholeQueue:
    """The article's global registry of named queues, shared by all modules."""

    def __init__(self):
        self.queues = dict()

    def register(self, queuename, queue):
        self.queues[queuename] = queue


class A(Process):
    """Network module: a sender and a receiver process."""

    def __init__(self, whole_queue, b_pool_size, n_items):
        super().__init__(target=self.do_run, name="A")
        self.whole_queue = whole_queue
        self.b_pool_size = b_pool_size
        self.n_items = n_items
        self.queue_list = []
        queue = Queue()
        self.whole_queue.register('A', queue)
        self.queue_list.append(queue)
        self.count = 0

    def do_run(self):
        a_send_pro = Process(target=self.send, name="A.send")
        a_send_pro.start()
        a_receive_pro = Process(target=self.receive, name="A.receive")
        a_receive_pro.start()
        a_send_pro.join()
        a_receive_pro.join()

    def send(self):
        first = time.perf_counter()
        while self.count < self.n_items:
            # (the article sleeps 1 ms here before every put)
            self.whole_queue.queues['B_%d' % (self.count % self.b_pool_size)].put_nowait(self.count)
            self.count += 1
        last = time.perf_counter()
        for i in range(self.b_pool_size):
            self.whole_queue.queues['B_%d' % i].put_nowait(STOP)
        self.whole_queue.queues['report'].put(('send', first, last))

    def receive(self):
        results = []
        while True:
            rece = self.whole_queue.queues['A'].get()
            if rece is STOP:
                break
            results.append(rece)  # (the article prints it)
        last = time.perf_counter()
        checksum = sum(int(r.rsplit('_', 1)[1]) for r in results)
        self.whole_queue.queues['report'].put(('receive', len(results), checksum, last))


class B(Process):
    """Data-processing module: b_pool_size component processes, one queue each."""

    def __init__(self, whole_queue, b_pool_size, c_pool_size, work):
        super().__init__(target=self.do_run, name="B")
        self.whole_queue = whole_queue
        self.b_pool_size = b_pool_size
        self.c_pool_size = c_pool_size
        self.work = work
        self.queue_list = []
        for i in range(self.b_pool_size):
            queue = Queue()
            self.whole_queue.register('B_%d' % i, queue)
            self.queue_list.append(queue)
        self.count = 0

    def do_run(self):
        components = []
        for i in range(self.b_pool_size):
            p = Process(target=self.component, args=(self.queue_list[i],), name="B.component_%d" % i)
            p.start()
            components.append(p)
        for p in components:
            p.join()

    def component(self, queue):
        while True:
            # (the article sleeps 10 ms here: replaced by the work below)
            info = queue.get()
            if info is STOP:
                for j in range(self.c_pool_size):  # every C receiver hears from every component
                    self.whole_queue.queues['C_%d' % j].put(STOP)
                break
            componext_info = preprocess(info, self.work.pre_iters)  # 'component_' + str(info)
            self.whole_queue.queues['C_%d' % (info % self.c_pool_size)].put(componext_info)


class C(Process):
    """Inference module: c_pool_size receivers, a cache (batcher), a predict process; forwards results."""

    def __init__(self, whole_queue, c_pool_size, b_pool_size, work):
        super().__init__(target=self.do_run, name="C")
        self.whole_queue = whole_queue
        self.c_pool_size = c_pool_size
        self.b_pool_size = b_pool_size
        self.work = work
        self.queue_list = []
        for i in range(self.c_pool_size):
            queue = Queue()
            self.whole_queue.register('C_%d' % i, queue)
            self.queue_list.append(queue)

    def do_run(self):
        cache_queue = Queue()
        result_queue = Queue()
        infer_queue = Queue()
        children = []
        for i in range(self.c_pool_size):
            p = Process(target=self.receive, args=(self.queue_list[i], cache_queue,), name="C.receive_%d" % i)
            p.start()
            children.append(p)
        cache_p = Process(target=self.cache, args=(cache_queue, infer_queue,), name="C.cache")
        cache_p.start()
        predict_p = Process(target=self.predict, args=(infer_queue, result_queue), name="C.predict")
        predict_p.start()
        children += [cache_p, predict_p]
        while True:
            res = result_queue.get()
            if res is STOP:
                self.whole_queue.queues['A'].put(STOP)
                break
            for ele in res:
                self.whole_queue.queues['A'].put(ele)
        for p in children:
            p.join()

    def receive(self, queue, cache_queue):
        stops = 0
        while True:
            info = queue.get()
            if info is STOP:
                stops += 1
                if stops == self.b_pool_size:
                    cache_queue.put(STOP)
                    break
                continue
            receive_info = 'receive_' + info
            cache_queue.put(receive_info)

    def cache(self, cache_queue, infer_queue):
        timeLast = time.time()
        caches = []
        stops = 0
        while True:
            data = cache_queue.get()
            if data is STOP:
                stops += 1
                if stops == self.c_pool_size:  # the end: flush the rest
                    if caches:
                        infer_queue.put(caches)
                    infer_queue.put(STOP)
                    break
                continue
            caches.append(data)
            if len(caches) > 128 or time.time() - timeLast > 1:
                timeLast = time.time()
                infer_queue.put(caches)
                caches = []

    def predict(self, infer_queue, result_queue):
        # The model must be built here, inside the predict process (as the article stresses).
        model = Model(self.work.model_base_iters, self.work.model_item_iters)
        sizes = []
        while True:
            data = infer_queue.get()
            if data is STOP:
                result_queue.put(STOP)
                break
            result = model(data)  # returns 'modelpredict_' + ele for each ele
            # (the article sleeps 0.1-0.5 s here: replaced by the model's own cost)
            sizes.append(len(data))
            result_queue.put(result)
        self.whole_queue.queues['report'].put(('predict', sizes))


def run_reference(n_items: int, work: Work | None = None, *, timeout: float = 600.0):
    """Run the system once over ``n_items`` ids: ``(seconds, results_count, peak_rss_bytes)``.

    ``work``: what each item and batch costs (a ``Work``; by default none at all)."""
    from benchmarks._rss import RssSampler

    work = work or Work()
    whole_queue = WholeQueue()
    report = Queue()
    whole_queue.register('report', report)
    module_list = [
        A(whole_queue, B_POOL_SIZE, n_items),
        B(whole_queue, B_POOL_SIZE, C_POOL_SIZE, work),
        C(whole_queue, C_POOL_SIZE, B_POOL_SIZE, work),
    ]
    got = {}
    with RssSampler(0.1) as sampler:
        start = time.perf_counter()
        for p in module_list:
            p.start()
        try:
            while len(got) < 3:  # send, receive, predict
                kind, *rest = report.get(timeout=timeout)
                got[kind] = rest
            for p in module_list:
                p.join(timeout)
        finally:
            for p in module_list:
                if p.is_alive():  # a failed run: do not leave processes behind
                    p.terminate()
                    p.join()
        joined = time.perf_counter()
    count, checksum, last = got['receive']
    seconds = last - start  # perf_counter is system-wide (CLOCK_MONOTONIC on Linux): comparable
    first_send, last_send = got['send']
    sizes = got['predict'][0]
    if checksum != n_items * (n_items - 1) // 2 or count != n_items:
        raise AssertionError(f"reference lost or mixed items: {count} results for {n_items} sent")
    if any(p.exitcode != 0 for p in module_list):
        raise AssertionError(f"reference module exit codes: {[p.exitcode for p in module_list]}")
    LAST_RUN.clear()
    LAST_RUN.update(seconds=seconds, flow_seconds=last - first_send, send_seconds=last_send - first_send,
                    startup_seconds=first_send - start, teardown_seconds=joined - last, batches=len(sizes),
                    mean_batch=sum(sizes) / len(sizes) if sizes else 0.0, max_batch=max(sizes, default=0),
                    rss_samples=sampler.samples, unreaped_cpu=sampler.unreaped_cpu)
    return seconds, count, sampler.peak


def main() -> int:
    import argparse

    from benchmarks._pipeline_tasks import cpu_work

    parser = argparse.ArgumentParser(description="Run the article's A->B->C system once per workload.")
    parser.add_argument("n_items", nargs="?", type=int, default=20_000)
    args = parser.parse_args()
    for work in (Work(), cpu_work(0.5e-3, 5e-3, 0.05e-3, "0.5 ms/item + model 5 ms + 0.05 ms/item")):
        seconds, count, peak = run_reference(args.n_items, work)
        print(f"{work.label}: {count:,} items in {seconds:.2f} s = {count / seconds:,.0f} items/s "
              f"(flow {LAST_RUN['flow_seconds']:.2f} s, start-up {LAST_RUN['startup_seconds']:.2f} s, "
              f"tear-down {LAST_RUN['teardown_seconds']:.2f} s, "
              f"{LAST_RUN['batches']} batches of {LAST_RUN['mean_batch']:.1f} on average), "
              f"peak RSS {peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
