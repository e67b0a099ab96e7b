"""The ingress' continuous batching (serving.coalescer), on a real event loop: what goes out in
which call, who gets which answer, and that a busy model gathers the next batch instead of being
sent a queue of small ones."""

import asyncio

import pytest

from serving.coalescer import Coalescer


class Model:
    """A downstream call that records its batches and takes `seconds` to answer."""

    def __init__(self, seconds: float = 0.0, fail_on=None):
        self.seconds, self.fail_on = seconds, fail_on
        self.calls: list[list] = []
        self.started: list[float] = []

    async def __call__(self, items: list) -> list:
        self.calls.append(list(items))
        self.started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise RuntimeError(f"cannot answer {self.fail_on}")
        return [ValueError(f"bad {x}") if isinstance(x, str) else x * 10 for x in items]


def run(coro):
    return asyncio.run(coro)


def test_requests_that_arrive_together_go_in_one_call_and_each_gets_its_answer():
    async def main():
        model = Model()
        c = Coalescer(model, max_batch_size=16, wait_s=0.05, inflight=2)
        out = await asyncio.gather(*(c.submit(i) for i in range(7)))
        return model, out
    model, out = run(main())
    assert out == [i * 10 for i in range(7)] and model.calls == [list(range(7))]


def test_no_call_carries_more_than_max_batch_size():
    async def main():
        model = Model(0.01)
        c = Coalescer(model, max_batch_size=4, wait_s=0.05, inflight=1)
        out = await asyncio.gather(*(c.submit(i) for i in range(10)))
        return model, out
    model, out = run(main())
    assert out == [i * 10 for i in range(10)]
    assert [len(b) for b in model.calls] == [4, 4, 2] and sum(model.calls, []) == list(range(10))


def test_while_the_call_is_busy_arrivals_gather_and_leave_together_without_a_second_wait():
    async def main():
        model = Model(0.2)
        c = Coalescer(model, max_batch_size=16, wait_s=0.5, inflight=1)
        t0 = asyncio.get_running_loop().time()
        first = asyncio.ensure_future(c.submit(0))
        await asyncio.sleep(0.05)                       # 0 left at once: nothing was running
        rest = [asyncio.ensure_future(c.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        more = [asyncio.ensure_future(c.submit(i)) for i in range(6, 9)]
        await asyncio.gather(first, *rest, *more)
        return model, [s - t0 for s in model.started]
    model, started = run(main())
    # 1..8 arrived while 0 was being answered: one call as soon as it returned (≈ 0.2 s), not
    # after a wait of their own (≈ 0.55 s).
    assert model.calls == [[0], list(range(1, 9))]
    assert started[0] == pytest.approx(0.0, abs=0.05) and started[1] == pytest.approx(0.2, abs=0.1)


def test_an_idle_model_gets_a_lone_request_at_once_and_a_running_one_gathers():
    async def main():
        model = Model(0.5)
        c = Coalescer(model, max_batch_size=16, wait_s=0.1, inflight=2)
        t0 = asyncio.get_running_loop().time()
        first = asyncio.ensure_future(c.submit(0))      # idle: no wait for the batch window
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(c.submit(1))     # 0 is running and a call is free: 1 waits
        await asyncio.sleep(0.03)                       # for others, at most 0.1 s from its arrival
        third = asyncio.ensure_future(c.submit(2))
        await asyncio.gather(first, second, third)
        return model, [s - t0 for s in model.started]
    model, started = run(main())
    assert model.calls == [[0], [1, 2]]
    assert started[0] == pytest.approx(0.0, abs=0.03) and started[1] == pytest.approx(0.15, abs=0.05)


def test_a_failed_call_fails_its_own_requests_only_and_an_answer_may_be_an_error():
    async def main():
        model = Model(fail_on=3)
        c = Coalescer(model, max_batch_size=2, wait_s=0.05, inflight=2)
        return await asyncio.gather(*(c.submit(x) for x in (1, "x", 3, 4, 5)), return_exceptions=True)
    out = run(main())
    assert out[0] == 10 and isinstance(out[1], ValueError) and str(out[1]) == "bad x"
    assert [type(o) for o in out[2:4]] == [RuntimeError] * 2 and "cannot answer 3" in str(out[2])
    assert out[4] == 50


def test_a_request_that_gave_up_is_not_sent():
    async def main():
        model = Model(0.1)
        c = Coalescer(model, max_batch_size=16, wait_s=0.0, inflight=1)
        busy = asyncio.ensure_future(c.submit(1))
        await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.submit(2), 0.01)          # times out while 1 is answered
        assert await asyncio.gather(busy, c.submit(3)) == [10, 30]
        return model
    assert run(main()).calls == [[1], [3]]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="inflight >= 1"):
        Coalescer(Model(), max_batch_size=4, wait_s=0.0, inflight=0)
