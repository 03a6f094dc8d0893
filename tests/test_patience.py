"""Lookups retried with backoff until a deadline (issue 14): the pure schedule, and the loop
over a lookup that finds nothing at first."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from chunkstore.errors import BootstrapFailed, NetworkError
from chunkstore.net.dht import DhtNode
from chunkstore.net.lookup import open_lookup
from chunkstore.net.patience import Backoff, retry_until_found, waited


def test_delays_double_to_the_cap_and_never_pass_the_deadline():
    backoff = Backoff(deadline=20.0, first=0.5, cap=4.0)
    now, delays = 0.0, []
    while (delay := backoff.next_delay(now)) is not None:
        delays.append(delay)
        now += delay
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert max(delays) == 4.0
    assert now == pytest.approx(20.0)  # the last delay is cut to end at the deadline
    assert backoff.attempts == len(delays) + 1
    assert Backoff(deadline=5.0).next_delay(5.0) is None  # past it: give up at once


def test_a_bad_schedule_is_refused():
    with pytest.raises(ValueError):
        Backoff(1.0, first=0)
    with pytest.raises(ValueError):
        Backoff(1.0, first=2.0, cap=1.0)


def test_a_lookup_empty_at_first_is_asked_again_until_it_answers():
    answers = [[], NetworkError("timed out"), [], ["holder"]]
    asked = []

    async def lookup() -> list[str]:
        answer = answers[len(asked)]
        asked.append(answer)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main():
        return await retry_until_found(lookup, bool, time.monotonic() + 30)

    found, attempts = asyncio.run(main())
    assert found == ["holder"] and attempts == 4 == len(asked)


def test_without_a_deadline_one_attempt_decides():
    calls = []

    async def empty() -> list:
        calls.append(1)
        return []

    async def failing() -> list:
        raise NetworkError("no answer")

    assert asyncio.run(retry_until_found(empty, bool, None)) == ([], 1)
    with pytest.raises(NetworkError):
        asyncio.run(retry_until_found(failing, bool, None))
    assert len(calls) == 1


def test_the_wait_is_said_only_after_several_attempts():
    assert waited(1, 0.0) == ""
    assert waited(5, 12.4) == " (asked 5 times over 12 s)"


def test_a_join_through_a_node_that_answers_late_is_tried_again(tmp_path):
    # The bootstrap address stays silent for its first ping (a node too busy to answer in
    # time), then a real node answers there: a patient get joins; an impatient one fails.
    host = "127.0.0.1"

    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind((host, 0))
        silent.setblocking(False)
        port = silent.getsockname()[1]
        loop = asyncio.get_running_loop()
        late = DhtNode()

        async def answer_late() -> None:
            await loop.sock_recv(silent, 4096)  # the first ping, left unanswered
            silent.close()
            await late.start(host, port)

        try:
            with pytest.raises(BootstrapFailed):
                async with open_lookup(tmp_path / "impatient", [(host, port)]):
                    pass
            with contextlib.suppress(BlockingIOError):
                while silent.recv(4096):  # the impatient join's pings: not the patient one's
                    pass
            switched = asyncio.create_task(answer_late())
            async with open_lookup(tmp_path / "patient", [(host, port)], patience=30) as lookup:
                assert switched.done()
                assert await lookup.find_name_records("nothing.bin") == []
        finally:
            silent.close()
            await late.stop()

    asyncio.run(main())
