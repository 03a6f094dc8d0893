"""ProviderStore: merge, TTL, caps and eviction, with explicit times."""

import pytest

from chunkstore.net.providers import Holder, ProviderStore

K1 = b"\x01" * 20
K2 = b"\x02" * 20
A = Holder("127.0.0.1", 8001)
B = Holder("127.0.0.2", 8002)
C = Holder("127.0.0.3", 8003)


def test_add_merges_holders_instead_of_overwriting():
    store = ProviderStore(ttl=100, shuffle_window=0)
    store.add(K1, A, now=0)
    store.add(K1, B, now=1)
    store.add(K1, A, now=2)  # re-announce: no duplicate
    assert set(store.get(K1, now=3)) == {A, B}
    assert store.get(K2, now=3) == []


def test_same_host_different_ports_are_different_holders():
    store = ProviderStore(ttl=100, shuffle_window=0)
    store.add(K1, Holder("127.0.0.1", 1), now=0)
    store.add(K1, Holder("127.0.0.1", 2), now=0)
    assert len(store.get(K1, now=0)) == 2


def test_get_returns_freshest_first():
    store = ProviderStore(ttl=100, shuffle_window=0)
    store.add(K1, A, now=0)
    store.add(K1, B, now=10)
    store.add(K1, C, now=5)
    assert store.get(K1, now=20) == [B, C, A]
    store.add(K1, A, now=30)  # re-announce moves A to the front
    assert store.get(K1, now=30) == [A, B, C]


def test_holders_expire_after_ttl_and_reannounce_extends():
    store = ProviderStore(ttl=100, shuffle_window=0)
    store.add(K1, A, now=0)
    store.add(K1, B, now=50)
    assert store.get(K1, now=99) == [B, A]
    assert store.get(K1, now=100) == [B]  # A expired exactly at 0 + ttl
    store.add(K1, B, now=120)
    assert store.get(K1, now=160) == [B]  # 50 + 100 would have passed
    assert store.get(K1, now=220) == []
    assert K1 not in store  # an emptied key is forgotten


def test_reannounce_with_an_older_time_never_shortens_expiry():
    store = ProviderStore(ttl=100, shuffle_window=0)
    store.add(K1, A, now=50)
    store.add(K1, A, now=10)
    assert store.get(K1, now=140) == [A]


def test_holder_cap_keeps_the_freshest():
    store = ProviderStore(ttl=1000, max_holders_per_key=3, shuffle_window=0)
    holders = [Holder("127.0.0.9", 9000 + i) for i in range(5)]
    for t, holder in enumerate(holders):
        store.add(K1, holder, now=t)
    assert store.get(K1, now=10) == holders[:1:-1]  # the three latest, newest first


def test_holder_cap_drops_expired_before_live_ones():
    store = ProviderStore(ttl=10, max_holders_per_key=2, shuffle_window=0)
    store.add(K1, A, now=0)  # expires at 10
    store.add(K1, B, now=5)  # expires at 15
    store.add(K1, C, now=12)  # A is expired: B stays
    assert store.get(K1, now=12) == [C, B]


def test_key_cap_evicts_the_least_recently_added_key():
    store = ProviderStore(ttl=1000, max_keys=2)
    k3 = b"\x03" * 20
    store.add(K1, A, now=0)
    store.add(K2, A, now=1)
    store.add(K1, B, now=2)  # K1 is now the more recently added-to key
    store.add(k3, A, now=3)
    assert len(store) == 2
    assert K2 not in store
    assert set(store.get(K1, now=4)) == {A, B}
    assert store.get(k3, now=4) == [A]


def test_cull_forgets_expired_holders_and_empty_keys():
    store = ProviderStore(ttl=100, shuffle_window=0)
    store.add(K1, A, now=0)
    store.add(K1, B, now=60)
    store.add(K2, C, now=10)
    assert store.cull(now=50) == 0
    assert store.cull(now=115) == 2  # A and C
    assert len(store) == 1
    assert store.get(K1, now=115) == [B]
    assert store.cull(now=1000) == 1
    assert len(store) == 0


def test_rejects_nonsensical_limits():
    with pytest.raises(ValueError):
        ProviderStore(ttl=0)
    with pytest.raises(ValueError):
        ProviderStore(max_holders_per_key=0)
    with pytest.raises(ValueError):
        ProviderStore(max_keys=0)


def test_holder_is_an_immutable_value():
    assert Holder("127.0.0.1", 1) == Holder("127.0.0.1", 1)
    with pytest.raises(AttributeError):
        A.port = 1  # type: ignore[misc]


def test_one_ip_keeps_a_few_slots_however_many_ports_it_announces():
    store = ProviderStore(ttl=1000, max_per_ip=4, relax_loopback=False, shuffle_window=0)
    honest = [Holder(f"127.0.0.{i}", 8000) for i in range(2, 12)]
    for t, holder in enumerate(honest):
        store.add(K1, holder, now=t)
    for port in range(64):  # one address, 64 ports, all fresher
        store.add(K1, Holder("127.0.0.99", 9000 + port), now=100 + port)
    held = store.get(K1, now=200)
    flooder = [h for h in held if h.host == "127.0.0.99"]
    assert len(flooder) == 4 and {h.port for h in flooder} == {9060, 9061, 9062, 9063}
    assert set(honest) <= set(held)
    # a loopback test swarm (many nodes on 127.0.0.1) is exempt by default
    relaxed = ProviderStore(ttl=1000)
    for port in range(10):
        relaxed.add(K1, Holder("127.0.0.1", 9000 + port), now=0)
    assert len(relaxed.get(K1, now=1)) == 10


def test_equally_fresh_holders_come_back_in_varying_order():
    store = ProviderStore(ttl=1000, shuffle_window=60)
    holders = [Holder("127.0.0.1", 9000 + i) for i in range(8)]
    for holder in holders:
        store.add(K1, holder, now=0)
    store.add(K1, Holder("127.0.0.1", 7000), now=500)  # fresher by far: always first
    orders = {tuple(store.get(K1, now=600)) for _ in range(20)}
    assert len(orders) > 1
    assert all(order[0] == Holder("127.0.0.1", 7000) for order in orders)
