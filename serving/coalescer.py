"""Continuous batching of requests into calls to a model deployment (plain asyncio, no Ray).

`@serve.batch` cuts a batch when its wait is over whether or not the model can take it, so under
load it sends many small batches that queue behind each other. A Coalescer keeps at most
`inflight` calls outstanding instead: while they are all busy, requests accumulate, and they
leave together as soon as a call returns, without waiting further. With no call in flight, a
request leaves at once (waiting would only add latency: nothing else is running to gather behind);
with some in flight and one more allowed, it waits at most `wait_s` (from its arrival) for others
to join it. No call carries more than `max_batch_size`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class _Pending:
    item: object
    future: asyncio.Future
    arrived: float = field(default=0.0)


class Coalescer:
    def __init__(self, send: Callable[[list], Awaitable[list]], max_batch_size: int, wait_s: float,
                 inflight: int):
        """send: a list of items → their answers, in order (an answer may be an exception, handed
        to its request; an exception raised by send goes to every request of the call)."""
        if max_batch_size < 1 or inflight < 1 or wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1, inflight >= 1 and wait_s >= 0, got "
                             f"{max_batch_size}, {inflight}, {wait_s}")
        self.send, self.max_batch_size, self.wait_s = send, max_batch_size, wait_s
        self._slots = asyncio.Semaphore(inflight)
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._calls: set[asyncio.Task] = set()

    async def submit(self, item):
        """The answer for `item`, computed in a batch with the items submitted around it."""
        loop = asyncio.get_running_loop()
        pending = _Pending(item, loop.create_future(), loop.time())
        self._queue.append(pending)
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._run())
        answer = await pending.future
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for(lambda: self._live() > 0, None)
            busy, running = self._slots.locked(), bool(self._calls)
            await self._slots.acquire()
            # Requests that queued while every call was busy have waited long enough: they go now.
            if running and not busy and self.wait_s > 0 and 0 < self._live() < self.max_batch_size:
                deadline = self._queue[0].arrived + self.wait_s
                await self._wait_for(lambda: self._live() >= self.max_batch_size, deadline - loop.time())
            batch = []
            while self._queue and len(batch) < self.max_batch_size:
                pending = self._queue.popleft()
                if not pending.future.done():           # a request that gave up is not computed
                    batch.append(pending)
            if not batch:
                self._slots.release()
                continue
            call = loop.create_task(self._call(batch))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    def _live(self) -> int:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        return len(self._queue)

    async def _wait_for(self, condition: Callable[[], bool], timeout: float | None) -> None:
        """Until `condition` holds after an arrival, or `timeout` seconds (None: no limit)."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not condition():
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def _call(self, batch: list[_Pending]) -> None:
        try:
            answers = await self.send([p.item for p in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"the model answered {len(answers)} of {len(batch)} requests")
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every request of the call gets it
            answers = [exc] * len(batch)
        finally:
            self._slots.release()
        for pending, answer in zip(batch, answers):
            if not pending.future.done():
                pending.future.set_result(answer)
