"""ModelEMA under torch.distributed: DDP replicas and FSDP2 (fully_shard, DTensor) shards, gloo on CPU, 2 processes.

Both backends run inside one spawn (starting processes costs more than the checks). Each check
compares against the float64 oracle; the FSDP2 check also asserts the state dict holds DTensors
whose local shards are what this rank averaged.
"""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
DECAY = 0.5  # large steps, so that a wrong shard or a missed update shows


def _oracle_blend(expected, name, value):
    from recipe_kernels import reference
    expected[name] = reference.ema_blend(expected[name], value.double(), DECAY, math_dtype=torch.float64)


def _check_ddp(rank, backend):
    import recipe_kernels as rk
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ema = rk.ModelEMA(ddp, decay=DECAY, backend=backend)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    expected = {k: v.double() if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    for step in range(3):
        data = torch.randn(4, 5, generator=torch.Generator().manual_seed(10 * step + rank))  # rank-local batch
        ddp(data).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(ddp)
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                _oracle_blend(expected, name, value)
            else:
                expected[name] = value.clone()
    state = ema.state_dict()
    assert state.pop("_ema_num_updates").item() == 3
    for name, value in state.items():
        torch.testing.assert_close(value.double() if value.is_floating_point() else value, expected[name], msg=name)
    # The parameters are replicas: every rank's EMA of them is the same, bit for bit.
    flat = torch.cat([p.reshape(-1) for p in ema.module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(g, gathered[0]) for g in gathered)


def _check_fsdp2(rank, backend):
    import recipe_kernels as rk
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    torch.manual_seed(0)
    # 7 rows over 2 ranks: uneven shards (4 and 3 rows).
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    ema = rk.ModelEMA(model, decay=DECAY, backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {name: p.full_tensor().double() for name, p in model.named_parameters()}
    for step in range(3):
        data = torch.randn(4, 5, generator=torch.Generator().manual_seed(10 * step + rank))
        model(data).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        for name, p in model.named_parameters():
            _oracle_blend(expected, name, p.full_tensor())  # the test gathers; the update itself does not
    state = ema.state_dict()
    state.pop("_ema_num_updates")
    for name, value in state.items():
        assert isinstance(value, DTensor), name
        assert value.placements == dict(model.named_parameters())[name].placements, name
        torch.testing.assert_close(value.full_tensor().double(), expected[name], msg=name)
    ema.copy_to(model)  # DTensor into DTensor, shard by shard
    for name, p in model.named_parameters():
        assert torch.equal(p.to_local(), state[name].to_local()), name
    # The function alone takes DTensors too and works on the local shards.
    shadow = [torch.zeros_like(p) for p in model.parameters()]
    rk.ema_update_(shadow, list(model.parameters()), 0.0, backend=backend)
    for copied, p in zip(shadow, model.parameters()):
        assert isinstance(copied, DTensor) and torch.equal(copied.to_local(), p.to_local())


def _worker(rank, init_file, backends):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        for backend in backends:
            _check_ddp(rank, backend)
            _check_fsdp2(rank, backend)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_replicas_and_fsdp2_shards_with_gloo():
    from conftest import DEVICE
    if DEVICE.type != "cpu":
        pytest.skip("the gloo check runs on the CPU (with TRITON_INTERPRET=1 for the Triton backend)")
    with tempfile.TemporaryDirectory() as directory:
        # Spawned workers inherit os.environ, including the TRITON_INTERPRET=1 that conftest set.
        assert os.environ.get("TRITON_INTERPRET") == "1"
        mp.spawn(_worker, args=(os.path.join(directory, "init"), ["torch", "triton"]), nprocs=WORLD_SIZE)
