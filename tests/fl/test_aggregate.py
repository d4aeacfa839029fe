"""Server aggregation against hand arithmetic."""

from __future__ import annotations

import torch
from torch import nn

from fedrec.fl.partition import SHARED, Partition, group_role
from fedrec.fl.strategy import RoundContext
from fedrec.methods.fedavg import FedAvg, FedAvgConfig


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.g = nn.Parameter(torch.zeros(1))


class GroupG(FedAvg):
    def partition_rules(self):
        return [("g", group_role("attr")), ("*", SHARED)]


def _ctx(weights, groups):
    return RoundContext(round=0, clients=torch.arange(len(weights)),
                        weights=torch.tensor(weights, dtype=torch.float64),
                        groups={"attr": torch.tensor(groups)}, n_groups={"attr": 3})


def test_weighted_mean_and_group_mean_by_hand():
    model = Tiny()
    strat = GroupG(FedAvgConfig(weighted=True))
    part = Partition.from_rules(model, strat.partition_rules())
    server = strat.init_server({"a": torch.zeros(2), "g": torch.tensor([7.0])}, part, {"attr": 3})
    assert server["g"].shape == (3, 1)  # one copy per group value, from round 0
    uploads = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]),
               "g": torch.tensor([[1.0], [2.0], [4.0]])}
    new = strat.aggregate(server, uploads, part, _ctx([1, 2, 5], [0, 0, 2]))
    # a = (1·[1,2] + 2·[3,4] + 5·[5,0]) / 8 = [32/8, 10/8]
    torch.testing.assert_close(new["a"], torch.tensor([4.0, 1.25]))
    # group 0: (1·1 + 2·2)/3 = 5/3; group 1 unsampled keeps 7; group 2: 4
    torch.testing.assert_close(new["g"], torch.tensor([[5 / 3], [7.0], [4.0]]))


def test_unweighted_mean():
    model = Tiny()
    strat = FedAvg(FedAvgConfig(weighted=False))
    part = Partition.from_rules(model, strat.partition_rules())
    server = strat.init_server({"a": torch.zeros(2), "g": torch.zeros(1)}, part, {})
    uploads = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "g": torch.tensor([[1.0], [2.0]])}
    new = strat.aggregate(server, uploads, part, _ctx([1, 9], [0, 0]))
    torch.testing.assert_close(new["a"], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(new["g"], torch.tensor([1.5]))


def test_broadcast_gives_copies_not_views():
    model = Tiny()
    strat = GroupG(FedAvgConfig())
    part = Partition.from_rules(model, strat.partition_rules())
    server = strat.init_server({"a": torch.ones(2), "g": torch.tensor([3.0])}, part, {"attr": 3})
    sent = strat.broadcast(server, part, torch.arange(2), {"attr": torch.tensor([0, 2])})
    sent["a"].add_(1.0)
    sent["g"].add_(1.0)
    assert torch.equal(server["a"], torch.ones(2))
    assert torch.equal(server["g"], torch.full((3, 1), 3.0))


def test_partition_rejects_unmatched_parameter():
    import pytest

    with pytest.raises(ValueError, match="matches no partition rule"):
        Partition.from_rules(Tiny(), [("a", SHARED)])
