"""The region-batching planner, without sockets: simulated networks of thousands of nodes."""

from __future__ import annotations

import random

import pytest

from chunkstore.net.announce_plan import (
    LAST_KEY,
    AnnouncePlan,
    Coverage,
    answer_serves,
    ball_blocks,
    key_bytes,
    key_int,
)


def closest(nodes, target, count):
    return sorted(nodes, key=lambda n: n ^ target)[:count]


def sweep(plan, nodes, width, limit=100_000):
    """Drive `plan` as the network shell does, with exact lookups (the `width` closest of
    every node); returns the number of lookups."""
    for _ in range(limit):
        target = plan.next_target()
        if target is None:
            return plan.lookups
        answered = closest(nodes, key_int(target), width)
        plan.learn(target, [key_bytes(n) for n in answered], width, True)
    raise AssertionError("the plan never settled")


@pytest.mark.parametrize(
    ("node_count", "key_count", "k"),
    [(500, 800, 20), (2000, 1500, 20), (200, 50, 8), (30, 300, 20), (5, 40, 20)],
)
def test_every_key_gets_exactly_its_k_closest_nodes(node_count, key_count, k):
    rng = random.Random(node_count * 7 + key_count)
    nodes = [rng.getrandbits(160) for _ in range(node_count)]
    keys = [key_bytes(rng.getrandbits(160)) for _ in range(key_count)]
    plan = AnnouncePlan(keys, k)
    lookups = sweep(plan, nodes, 2 * k)
    for key in keys:
        assert [key_int(n) for n in plan.holders(key)] == closest(nodes, key_int(key), k)
    # A region lookup settles many keys: about one lookup per 2 k nodes' worth of keyspace,
    # never one per key.
    assert lookups <= max(2, 2 * node_count // k)
    assignments = plan.assignments()
    assert sum(len(v) for v in assignments.values()) == key_count * min(k, node_count)
    assert set(assignments) <= {key_bytes(n) for n in nodes}


def test_lookups_stay_few_whatever_the_number_of_keys():
    rng = random.Random(5)
    nodes = [rng.getrandbits(160) for _ in range(1000)]
    counts = []
    for key_count in (2000, 20_000):
        keys = [key_bytes(rng.getrandbits(160)) for _ in range(key_count)]
        counts.append(sweep(AnnouncePlan(keys, 20), nodes, 40))
    # ten times the keys, about the same lookups: the keyspace is covered once either way
    assert counts[1] <= counts[0] * 1.3


def test_a_few_keys_cost_about_a_lookup_each():
    rng = random.Random(6)
    nodes = [rng.getrandbits(160) for _ in range(5000)]
    keys = [key_bytes(rng.getrandbits(160)) for _ in range(10)]
    assert sweep(AnnouncePlan(keys, 20), nodes, 40) <= 10


def test_clustered_keys_share_their_lookups():
    rng = random.Random(7)
    nodes = [rng.getrandbits(160) for _ in range(2000)]
    base = rng.getrandbits(160) >> 120 << 120  # 1,000 keys under one 40-bit prefix
    keys = [key_bytes(base | rng.getrandbits(120)) for _ in range(1000)]
    plan = AnnouncePlan(keys, 20)
    assert sweep(plan, nodes, 40) == 1
    for key in keys[:50]:
        assert [key_int(n) for n in plan.holders(key)] == closest(nodes, key_int(key), 20)


def test_an_unfinished_lookup_proves_nothing_and_the_rest_is_settled_best_effort():
    rng = random.Random(8)
    nodes = [rng.getrandbits(160) for _ in range(300)]
    keys = [key_bytes(rng.getrandbits(160)) for _ in range(100)]
    plan = AnnouncePlan(keys, 20)
    target = plan.next_target()
    plan.learn(target, [key_bytes(n) for n in closest(nodes, key_int(target), 40)], 40, False)
    assert plan.next_target() == target  # not settled by a lookup that timed out
    plan.settle_key(target)
    assert plan.next_target() != target
    assert [key_int(n) for n in plan.holders(target)] == closest(nodes, key_int(target), 20)
    plan.settle_rest()
    assert plan.next_target() is None and plan.unsettled == 0
    # never dropped: every key has holders, the best known
    assert all(len(plan.holders(key)) == 20 for key in keys)


def test_a_node_learnt_late_is_chosen_when_it_is_closer():
    """An answer that came after its lookup ended still counts in the holders chosen."""
    rng = random.Random(9)
    nodes = [rng.getrandbits(160) for _ in range(100)]
    keys = [key_bytes(rng.getrandbits(160)) for _ in range(30)]
    late = closest(nodes, key_int(keys[0]), 1)[0]
    others = [n for n in nodes if n != late]
    plan = AnnouncePlan(keys, 10)
    sweep(plan, others, 20)
    plan.learn_node(key_bytes(late))
    assert key_int(plan.holders(keys[0])[0]) == late


def test_a_lookup_nobody_answered_proves_nothing():
    plan = AnnouncePlan([key_bytes(5), key_bytes(6)], 20)
    plan.learn_node(key_bytes(7))  # the announcer itself
    plan.learn(key_bytes(5), [], 40, True)
    assert plan.next_target() == key_bytes(5)


def test_no_node_known_settles_nothing():
    plan = AnnouncePlan([key_bytes(1), key_bytes(2)], 20)
    assert plan.next_target() == key_bytes(1)
    plan.settle_rest()
    assert plan.holders(key_bytes(1)) == []
    assert plan.assignments() == {}


def test_ball_blocks_are_exactly_the_ball():
    rng = random.Random(10)
    for _ in range(200):
        bits = rng.randint(1, 12)  # small spaces, checked point by point
        centre, radius = rng.getrandbits(bits), rng.getrandbits(bits)
        blocks = ball_blocks(centre, radius)
        inside = {y for low, high in blocks for y in range(low, high + 1)}
        assert inside == {y for y in range(1 << bits) if y ^ centre <= radius}
        assert sum(high - low + 1 for low, high in blocks) == len(inside)  # disjoint
    whole = ball_blocks(123, LAST_KEY)
    assert sum(high - low + 1 for low, high in whole) == LAST_KEY + 1


def test_coverage_merges_and_answers_containment():
    rng = random.Random(11)
    coverage = Coverage()
    points = set()
    for _ in range(300):
        low = rng.randrange(2000)
        high = low + rng.randrange(30)
        coverage.add(low, high)
        points.update(range(low, high + 1))
        a = rng.randrange(2100)
        b = a + rng.randrange(20)
        assert coverage.covers(a, b) == all(x in points for x in range(a, b + 1))
    assert coverage.covers(0, 0) == (0 in points)


def test_an_answer_serves_another_target_only_when_it_says_all_there_is():
    rng = random.Random(12)
    nodes = [rng.getrandbits(160) for _ in range(2000)]
    served = 0
    for _ in range(300):
        asked = rng.getrandbits(160)
        answer = closest(nodes, asked, 20)
        target = asked ^ rng.getrandbits(rng.randint(1, 160))
        if answer_serves(asked, answer, 20, target):
            served += 1
            # then the 20 closest of `target` among everything are in the answer
            assert set(closest(nodes, target, 20)) <= set(answer)
    assert 0 < served < 300
    # the same key is always served; a short answer (the node knows nothing more) too
    assert answer_serves(asked, answer, 20, asked)
    assert answer_serves(asked, answer[:5], 20, rng.getrandbits(160))
