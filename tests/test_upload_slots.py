"""The transfer server's upload slots and their queue (net/upload_slots.py): pure logic."""

from __future__ import annotations

import pytest

from chunkstore.net.upload_slots import UploadSlots, Verdict


def test_slots_then_queue_then_refusal() -> None:
    slots = UploadSlots(2, queue_limit=3)
    assert slots.admit("a", 8).verdict is Verdict.GRANTED
    assert slots.admit("b", 8).verdict is Verdict.GRANTED
    queued = [slots.admit(key, 8) for key in ("a", "b", "c")]
    assert [q.verdict for q in queued] == [Verdict.QUEUED] * 3
    assert slots.admit("d", 8).verdict is Verdict.REFUSED  # the queue is full
    assert slots.active == 2 and slots.waiting == 3
    assert slots.retry_after() == 2  # one round of slots queued, and more


def test_a_freed_slot_goes_to_the_waiting_addresses_in_turn() -> None:
    # One greedy address queues many requests, then two others one each: they are served
    # between the greedy one's, not after all of them.
    slots = UploadSlots(1, queue_limit=20)
    assert slots.admit("greedy", 10).verdict is Verdict.GRANTED
    greedy = [slots.admit("greedy", 10).ticket for _ in range(5)]
    other = slots.admit("other", 10).ticket
    third = slots.admit("third", 10).ticket
    order: list[int] = []
    holder = "greedy"
    for _ in range(7):
        [ticket] = slots.release(holder)
        order.append(ticket)
        holder = "greedy" if ticket in greedy else "other" if ticket == other else "third"
    assert order[:3] == [greedy[0], other, third]
    assert order[3:] == greedy[1:]
    assert slots.release(holder) == [] and slots.active == 0 and slots.waiting == 0


def test_an_address_at_its_share_is_refused_not_queued() -> None:
    # Its share held (say by peers that never read), an address's further requests are
    # refused at once: they must not fill the queue and take every slot it frees.
    slots = UploadSlots(3, queue_limit=10)
    for _ in range(2):
        assert slots.admit("a", 2).verdict is Verdict.GRANTED
    assert slots.admit("a", 2).verdict is Verdict.REFUSED
    assert slots.admit("b", 2).verdict is Verdict.GRANTED
    # Every slot taken: b holds one of two, so it may queue one more, and no more.
    assert slots.admit("b", 2).verdict is Verdict.QUEUED
    assert slots.admit("b", 2).verdict is Verdict.REFUSED
    assert slots.admit("c", 2).verdict is Verdict.QUEUED
    [ticket] = slots.release("a")  # b was first in line
    assert slots.held_by("b") == 2 and slots.waiting == 1 and ticket


def test_withdrawn_tickets_are_skipped() -> None:
    slots = UploadSlots(1, queue_limit=5)
    slots.admit("a", 5)
    gone = slots.admit("b", 5).ticket
    stays = slots.admit("c", 5).ticket
    assert slots.withdraw("b", gone)
    assert not slots.withdraw("b", gone)  # already gone
    assert slots.release("a") == [stays]
    assert not slots.withdraw("c", stays)  # granted: the caller holds the slot now
    assert slots.release("c") == [] and slots.active == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        UploadSlots(0, queue_limit=1)
    with pytest.raises(ValueError):
        UploadSlots(1, queue_limit=-1)
