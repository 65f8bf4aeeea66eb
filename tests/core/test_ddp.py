"""DDP (gloo, 2 CPU processes): packed and baseline runs end bit-identical; ranks draw different masks."""

import copy
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pmdrop

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # same initial weights on every rank
    initial = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Dropout(0.3), torch.nn.Linear(64, 4))
    results = {}
    for variant in ("baseline", "pmdrop", "seeded"):
        model = torch.nn.parallel.DistributedDataParallel(pmdrop.convert(copy.deepcopy(initial), variant))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)  # dropout seeded per rank, reproducibly
        data = torch.Generator().manual_seed(rank)
        masks = []
        for _ in range(STEPS):
            x = torch.randn(8, 32, generator=data)
            hidden = model.module[0](x)
            state = torch.get_rng_state()
            masks.append(torch.nn.functional.dropout(hidden, 0.3) != 0)  # the mask this step's forward will draw
            torch.set_rng_state(state)
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        results[variant] = {"params": [p.detach().clone() for p in model.parameters()], "masks": masks}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_ddp_two_ranks_bit_identical_and_rank_specific_masks(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank in ranks:
        for variant in ("pmdrop", "seeded"):
            assert _equal(rank["baseline"]["params"], rank[variant]["params"])
    # DDP keeps replicas equal; the dropout masks differ between ranks.
    assert _equal(ranks[0]["pmdrop"]["params"], ranks[1]["pmdrop"]["params"])
    assert not torch.equal(ranks[0]["pmdrop"]["masks"][0], ranks[1]["pmdrop"]["masks"][0])
