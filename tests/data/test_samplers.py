"""Samplers: infinite training streams, sharding across ranks, repeat factors, inference shards."""
import itertools
import math
from collections import Counter

import pytest
import torch
from torch.utils.data import SequentialSampler

from detzoo.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from detzoo.data.samplers import distributed_sampler
from detzoo.utils import comm


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def as_rank(monkeypatch, rank, world_size):
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)


class TestTrainingSampler:
    def test_each_pass_is_a_permutation(self):
        stream = take(TrainingSampler(7, seed=3), 7 * 5)
        for start in range(0, 35, 7):
            assert sorted(stream[start:start + 7]) == list(range(7))
        assert stream[:7] != stream[7:14] or stream[7:14] != stream[14:21]  # reshuffled each pass
        assert all(isinstance(i, int) for i in stream)

    def test_seeded_and_unshuffled(self):
        assert take(TrainingSampler(10, seed=5), 30) == take(TrainingSampler(10, seed=5), 30)
        assert take(TrainingSampler(4, shuffle=False, seed=0), 10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]

    def test_ranks_split_one_stream(self, monkeypatch):
        full = take(TrainingSampler(11, seed=7), 33)
        per_rank = []
        for rank in range(3):
            as_rank(monkeypatch, rank, 3)
            per_rank.append(take(TrainingSampler(11, seed=7), 11))
        # rank r takes elements r, r + 3, r + 6, ... of the single-process stream
        assert [x for group in zip(*per_rank) for x in group] == full

    def test_seed_comes_from_rank_zero(self, monkeypatch):
        calls = []
        monkeypatch.setattr(comm, "shared_random_seed", lambda: calls.append(1) or 1234)
        assert take(TrainingSampler(9), 18) == take(TrainingSampler(9, seed=1234), 18)
        assert calls == [1]

    def test_bad_size(self):
        with pytest.raises(ValueError, match="positive"):
            TrainingSampler(0, seed=0)
        with pytest.raises(TypeError, match="int"):
            TrainingSampler(3.0, seed=0)


def test_random_subset_training_sampler():
    sampler = RandomSubsetTrainingSampler(20, 0.35, seed_shuffle=1, seed_subset=2)
    subset = set(sampler._indexes_subset.tolist())
    assert len(subset) == 7
    stream = take(sampler, 7 * 4)
    for start in range(0, 28, 7):
        assert set(stream[start:start + 7]) == subset
    same = RandomSubsetTrainingSampler(20, 0.35, shuffle=False, seed_shuffle=9, seed_subset=2)
    assert set(take(same, 7)) == subset
    with pytest.raises(ValueError, match="subset_ratio"):
        RandomSubsetTrainingSampler(20, 1.5, seed_shuffle=0, seed_subset=0)
    with pytest.raises(ValueError, match="empty subset"):
        RandomSubsetTrainingSampler(3, 0.1, seed_shuffle=0, seed_subset=0)


class TestRepeatFactor:
    def dicts(self):
        # category 0 in every image, 1 in half, 2 in one image out of eight
        categories = [[0], [0, 1], [0], [0, 1], [0], [0, 1], [0], [0, 1, 2]]
        return [{"annotations": [{"category_id": c} for c in cats]} for cats in categories] + [{"annotations": []}]

    def brute_force_factors(self, dicts, thresh, sqrt):
        num = len(dicts)
        factors = []
        for d in dicts:
            best = 1.0
            for c in {a["category_id"] for a in d["annotations"]}:
                freq = sum(any(a["category_id"] == c for a in e["annotations"]) for e in dicts) / num
                best = max(best, math.sqrt(thresh / freq) if sqrt else thresh / freq)
            factors.append(best)
        return factors

    @pytest.mark.parametrize("sqrt", [True, False])
    def test_factors_from_category_frequency(self, sqrt):
        dicts = self.dicts()
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5, sqrt=sqrt)
        assert factors.dtype == torch.float32
        expected = torch.tensor(self.brute_force_factors(dicts, 0.5, sqrt), dtype=torch.float32)
        torch.testing.assert_close(factors, expected)
        # the image with the rarest category (frequency 1/9) gets sqrt(0.5 * 9) or 0.5 * 9
        assert factors[7].item() == pytest.approx(math.sqrt(4.5) if sqrt else 4.5)

    def test_integer_factors_repeat_exactly(self):
        sampler = RepeatFactorTrainingSampler(torch.tensor([1.0, 2.0, 3.0, 0.0]), shuffle=False, seed=0)
        assert take(sampler, 12) == [0, 1, 1, 2, 2, 2] * 2
        shuffled = RepeatFactorTrainingSampler(torch.tensor([1.0, 2.0, 3.0]), seed=0)
        assert Counter(take(shuffled, 6)) == {0: 1, 1: 2, 2: 3}

    def test_fractional_factors_on_average(self):
        sampler = RepeatFactorTrainingSampler(torch.tensor([0.5, 1.25, 2.0]), seed=0)
        g = torch.Generator()
        g.manual_seed(0)
        epochs = [sampler._get_epoch_indices(g) for _ in range(2000)]
        counts = torch.stack([torch.bincount(e, minlength=3) for e in epochs]).float().mean(0)
        torch.testing.assert_close(counts, torch.tensor([0.5, 1.25, 2.0]), atol=0.05, rtol=0)

    def test_ranks_split_one_stream(self, monkeypatch):
        factors = torch.tensor([1.0, 2.5, 0.3, 1.7])
        full = take(RepeatFactorTrainingSampler(factors, seed=4), 40)
        per_rank = []
        for rank in range(2):
            as_rank(monkeypatch, rank, 2)
            per_rank.append(take(RepeatFactorTrainingSampler(factors, seed=4), 20))
        assert [x for pair in zip(*per_rank) for x in pair] == full

    def test_bad_factors(self):
        with pytest.raises(ValueError, match=">= 0"):
            RepeatFactorTrainingSampler(torch.tensor([1.0, -1.0]), seed=0)
        with pytest.raises(ValueError, match="not all 0"):
            RepeatFactorTrainingSampler(torch.zeros(3), seed=0)
        with pytest.raises(ValueError, match="1-D"):
            RepeatFactorTrainingSampler(torch.ones(2, 2), seed=0)


@pytest.mark.parametrize("size,world_size", [(10, 3), (2, 4), (9, 3), (1, 1), (100, 8)])
def test_inference_sampler_covers_every_index_once(monkeypatch, size, world_size):
    shards = []
    for rank in range(world_size):
        as_rank(monkeypatch, rank, world_size)
        sampler = InferenceSampler(size)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert [i for shard in shards for i in shard] == list(range(size))
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1


def test_inference_sampler_local_indices_formula():
    for total, world in [(10, 3), (7, 7), (5, 2)]:
        sizes = [len(InferenceSampler._get_local_indices(total, world, r)) for r in range(world)]
        assert sizes == [total // world + (r < total % world) for r in range(world)]
    assert distributed_sampler.__all__


def test_grouped_batch_sampler():
    group_ids = [0, 1, 0, 0, 1, 1, 1, 0, 0, 1]
    batches = list(GroupedBatchSampler(SequentialSampler(range(10)), group_ids, 2))
    assert batches == [[0, 2], [1, 4], [5, 6], [3, 7]]  # 8 and 9 wait for partners, never released
    for batch in batches:
        assert len({group_ids[i] for i in batch}) == 1
    with pytest.raises(TypeError, match="grouping"):
        len(GroupedBatchSampler(SequentialSampler(range(10)), group_ids, 2))
    with pytest.raises(ValueError, match="Sampler"):
        GroupedBatchSampler(range(10), group_ids, 2)
