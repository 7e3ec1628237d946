"""Network sources (fixed, fresh, zoo) and the seed families they and the scorers draw from."""
from collections import Counter

import pytest
import torch

from datadistill import models
from datadistill.errors import ConfigError
from datadistill.nets import (SEEDS_PER_FAMILY, FixedNets, FreshNets, ZooNets, draw_seeds, eval_seeds,
                              fresh_nets, selection_seeds, zoo_seeds)
from datadistill.world import World

W = "net.1.weight"  # the MLP's first layer: differs between any two draws


@pytest.fixture
def model():
    return models.build_model("MLP", 1, 8, 3)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tagged_zoo(n):
    """A zoo whose network i is recognisable: its only weight is [i]."""
    return {"w": torch.arange(float(n)).view(n, 1)}


def _ids(params):
    return params["w"].view(-1).long().tolist()


# -- fixed ------------------------------------------------------------------------------------------
def test_fixed_nets_are_the_same_every_sample_and_leave_the_stream_alone(model):
    g = _gen()
    source = FixedNets(model, "xavier", 1.0, 3, "cpu", g)
    assert source.total == 3 and len(source.seeds) == 3 and source.params[W].shape[0] == 3
    # drawn from the run's stream: the same stream gives the same networks, another stream others
    assert _equal(FixedNets(model, "xavier", 1.0, 3, "cpu", _gen()).params, source.params)
    assert not torch.equal(FixedNets(model, "xavier", 1.0, 3, "cpu", _gen(1)).params[W], source.params[W])
    assert _equal(source.params, fresh_nets(model, "xavier", 1.0, source.seeds, "cpu"))
    state = g.get_state()
    first = {k: v.clone() for k, v in source.sample(g).items()}
    for _ in range(3):
        assert _equal(source.sample(g), first)
    assert torch.equal(g.get_state(), state)  # sampling draws nothing
    assert _equal(first, source.params)  # one process: its share is all of them


def test_fixed_nets_state_round_trips(model):
    source = FixedNets(model, "xavier", 1.0, 2, "cpu", _gen(0))
    other = FixedNets(model, "xavier", 1.0, 2, "cpu", _gen(7))
    assert not torch.equal(other.params[W], source.params[W])
    other.load_state_dict(source.state_dict())
    assert other.seeds == source.seeds
    assert _equal(other.params, source.params) and _equal(other.sample(_gen()), source.sample(_gen()))


def test_fixed_nets_split_over_processes_into_disjoint_shares(model):
    whole = FixedNets(model, "xavier", 1.0, 4, "cpu", _gen())
    shares = [FixedNets(model, "xavier", 1.0, 4, "cpu", _gen(), World(r, 2)) for r in range(2)]
    for s in shares:
        assert s.total == 4 and _equal(s.params, whole.params)  # every process knows all of them
    assert torch.equal(torch.cat([s.mine[W] for s in shares]), whole.params[W])


# -- fresh ------------------------------------------------------------------------------------------
def test_fresh_nets_differ_between_samples_and_follow_the_generator(model):
    source = FreshNets(model, "xavier", 1.0, 2, "cpu")
    g = _gen(5)
    a, b = source.sample(g), source.sample(g)
    assert a[W].shape[0] == 2 and not torch.equal(a[W][0], a[W][1])
    assert not torch.equal(a[W], b[W])
    # the same generator seed replays the same sequence, another seed gives others
    g2 = _gen(5)
    assert _equal(source.sample(g2), a) and _equal(source.sample(g2), b)
    assert not torch.equal(source.sample(_gen(6))[W], a[W])
    # and the networks are those of the seeds drawn from the stream
    assert _equal(a, fresh_nets(model, "xavier", 1.0, draw_seeds(_gen(5), 2), "cpu"))
    assert source.state_dict() == {}  # nothing to resume: the generator's state is the run's


def test_fresh_nets_split_over_processes_keep_the_stream_in_step(model):
    whole = FreshNets(model, "xavier", 1.0, 4, "cpu").sample(_gen(3))
    gens = [_gen(3), _gen(3)]
    shares = [FreshNets(model, "xavier", 1.0, 4, "cpu", World(r, 2)).sample(gens[r]) for r in range(2)]
    assert all(s[W].shape[0] == 2 for s in shares)
    assert torch.equal(torch.cat([s[W] for s in shares]), whole[W])
    assert torch.equal(gens[0].get_state(), gens[1].get_state())  # both drew the same numbers


# -- zoo --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k", [(5, 2), (7, 3), (6, 4), (4, 4)])
def test_zoo_uses_every_network_once_before_any_twice(n, k):
    source = ZooNets(_tagged_zoo(n), k, "cpu")
    assert source.total == k
    g = _gen(0)
    draws = [_ids(source.sample(g)) for _ in range(3 * n)]
    assert all(len(d) == k and len(set(d)) == k for d in draws)  # no network twice in one draw
    seq = [i for d in draws for i in d]
    assert sorted(seq[:n]) == list(range(n))  # the first n uses: every network, once
    assert set(seq) == set(range(n))


@pytest.mark.parametrize("n,k", [(5, 2), (7, 3)])
def test_zoo_keeps_cycling_evenly(n, k):
    """Cycling through permutations: at every point, no network has been used more than once
    more than any other."""
    source = ZooNets(_tagged_zoo(n), k, "cpu")
    g = _gen(0)
    seq = [i for _ in range(20 * n) for i in _ids(source.sample(g))]
    counts = Counter()
    for m, i in enumerate(seq):
        counts[i] += 1
        spread = max(counts.values()) - min(counts[j] for j in range(n))
        assert spread <= 1, f"after {m + 1} uses: {dict(counts)}"


def test_zoo_order_resumes_from_its_state():
    n, k = 7, 3
    straight = ZooNets(_tagged_zoo(n), k, "cpu")
    g = _gen(2)
    want = [_ids(straight.sample(g)) for _ in range(8)]

    first = ZooNets(_tagged_zoo(n), k, "cpu")
    g1 = _gen(2)
    got = [_ids(first.sample(g1)) for _ in range(3)]  # stops with part of a permutation queued
    state, gen_state = first.state_dict(), g1.get_state()
    assert _ids(first.sample(g1)) == want[3]  # and goes on; the saved state is a copy, untouched
    resumed = ZooNets(_tagged_zoo(n), k, "cpu")
    g2 = torch.Generator()
    g2.set_state(gen_state)
    resumed.load_state_dict(state)
    assert got + [_ids(resumed.sample(g2)) for _ in range(5)] == want
    # without its state the order starts over: the same stream gives other networks
    g3 = torch.Generator()
    g3.set_state(gen_state)
    fresh = ZooNets(_tagged_zoo(n), k, "cpu")
    assert [_ids(fresh.sample(g3)) for _ in range(5)] != want[3:8]


def test_zoo_shares_are_disjoint_blocks_drawn_in_step():
    n = 8
    zoo = _tagged_zoo(n)
    gens = [_gen(4), _gen(4)]
    shares = [ZooNets(zoo, 4, "cpu", World(r, 2)) for r in range(2)]
    for _ in range(5):
        a, b = (_ids(s.sample(gens[r])) for r, s in enumerate(shares))
        assert len(a) == len(b) == 2
        assert set(a) <= set(range(4)) and set(b) <= set(range(4, 8))  # each its own block
        assert [i + 4 for i in a] == b  # the same positions: one draw for both
    assert torch.equal(gens[0].get_state(), gens[1].get_state())
    assert _equal(shares[0].all, zoo)


# -- seeds ------------------------------------------------------------------------------------------
def _drawn(seeds: list[int]) -> set[int]:
    """The seeds as torch's CPU generator uses them: it keeps the low 32 bits."""
    return {s % 2**32 for s in seeds}


def test_torch_keeps_the_low_32_bits_of_a_seed():
    # why the families below must differ in their low 32 bits: 2**32 + i draws what i draws
    same = [torch.rand(3, generator=torch.Generator().manual_seed(s)) for s in (7, 2**32 + 7, 2**40 + 7)]
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


def test_seed_families_are_disjoint_for_sensible_sizes():
    draws = draw_seeds(_gen(0), 10_000)
    assert all(0 <= s < 2**31 - 1 for s in draws)
    assert draws != draw_seeds(_gen(1), 10_000) and draws == draw_seeds(_gen(0), 10_000)
    zoo_train, zoo_test = _drawn(zoo_seeds("train", 0, 100_000)), _drawn(zoo_seeds("test", 0, 100_000))
    assert len(zoo_train) == len(zoo_test) == 100_000 and not zoo_train & zoo_test
    assert zoo_seeds("train", 10, 12) == sorted(zoo_train)[10:12]  # a range of the same family
    for run_seed in (0, 1, 2, 5, 42, 2**32 - 1):
        scoring = _drawn(eval_seeds(run_seed, 1000))
        choosing = _drawn(selection_seeds(run_seed, 1000))
        assert len(scoring) == len(choosing) == 1000
        assert not scoring & choosing
        assert not scoring & _drawn(eval_seeds(run_seed + 1, 1000))  # another run, other scorers
        for family in (zoo_train, zoo_test):
            assert not scoring & family and not choosing & family
        assert not (scoring | choosing) & set(draws)
    assert eval_seeds(1, 3) == eval_seeds(1, 5)[:3]  # the first networks do not depend on how many


def test_seed_families_lie_in_disjoint_ranges_below_2_32_by_construction():
    """The nets.py docstring: every family in its own 32-bit range above the training draws (below
    2**31), so no scoring network can ever be a training one, whatever the run seed or the counts."""
    n = SEEDS_PER_FAMILY
    train = (zoo_seeds("train", 0, 1)[0], zoo_seeds("train", n - 1, n)[0])
    test = (zoo_seeds("test", 0, 1)[0], zoo_seeds("test", n - 1, n)[0])
    scoring = (test[1] + 1, test[1] + n)  # the ranges the two families below must keep to
    choosing = (scoring[1] + 1, scoring[1] + n)
    assert 2**31 - 1 <= train[0] < train[1] < test[0] < test[1] and choosing[1] < 2**32
    for run_seed in (0, 1, 4293, 4294, 2**31, 2**32 - 1):  # past 2**32 / EVAL_SEED_OFFSET a plain sum wraps
        for seeds, (low, high) in ((eval_seeds(run_seed, 1000), scoring), (selection_seeds(run_seed, 1000), choosing)):
            assert len(set(seeds)) == 1000 and all(low <= s <= high for s in seeds)
    with pytest.raises(ConfigError, match=f"at most {n} networks of one kind"):
        zoo_seeds("test", 0, n + 1)


def test_train_and_test_zoo_networks_start_apart():
    # the networks themselves, not only their seeds: test-phase network i is not train-phase network i
    model = models.build_model("LeNet", 1, 28, 10)
    train = fresh_nets(model, "xavier", 1.0, zoo_seeds("train", 0, 2), "cpu")
    test = fresh_nets(model, "xavier", 1.0, zoo_seeds("test", 0, 2), "cpu")
    assert all(not torch.equal(train[k][i], test[k][i]) for k in train if k.endswith("weight") for i in range(2))
