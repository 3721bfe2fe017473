"""drop_path_residual: the subset, the scaling, gradients, the RNG across backends, compile and bad input.

The oracle is written here: with S and k from the seed (reference.subset_keys/subset_from_keys,
checked against the kernels' keys and against uniform selection below), the output is
x.index_add(0, S, branch(x[S]), alpha=N/k) in float64 (DINOv2's formula).
"""
import itertools
import math

import pytest
import torch

import recipe_kernels as rk
from recipe_kernels import _backend, reference
from recipe_kernels._philox import draw_seed
from recipe_kernels.drop_path_residual import (_combine_rows_cuda_arguments, _subset_keys_cuda_arguments, gather_op,
                                               residual_add_op, subset_op, subset_scale, subset_size)

from conftest import DEVICE

SEED = 1234


def sample_inputs(shape=(8, 3, 4), dtype=torch.float32, seed=0):
    """x and a per-row branch (a Linear over the last dimension, so each sample's output depends on it alone)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    branch = torch.nn.Linear(shape[-1], shape[-1]).to(DEVICE, dtype)
    return x, branch


def oracle_subset(num_samples, p, seed=SEED):
    """(S, k) that the next call draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    kept = max(1, int(num_samples * (1 - p)))
    rows, _ = reference.subset_from_keys(reference.subset_keys(draw_seed(DEVICE), num_samples), kept)
    return rows, kept


def oracle_output(x, branch, rows, kept):
    """DINOv2's formula in float64: x + N/k * branch(x[S]) added at S."""
    return x.index_add(0, rows, branch(x[rows]), alpha=x.shape[0] / kept)


def run(x, branch, p, backend, **kwargs):
    torch.manual_seed(SEED)
    return rk.drop_path_residual(x, branch, p, backend=backend, **kwargs)


class RecordingBranch(torch.nn.Module):
    """Records the shape and contiguity of every input; returns 2x + 1."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, t):
        self.calls.append((tuple(t.shape), t.is_contiguous()))
        return 2 * t + 1


# ----------------------------------------------------------------------------- subset and scaling


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_subset_recovered_from_output_and_rows_scaled(backend, dtype):
    x, branch = sample_inputs((16, 3, 8), dtype)
    with torch.no_grad():
        out = run(x, branch, 0.4, backend)
    rows, kept = oracle_subset(16, 0.4)
    changed = (out != x).flatten(1).any(1).nonzero().flatten()
    assert torch.equal(changed, rows) and kept == 9
    unselected = torch.ones(16, dtype=torch.bool, device=DEVICE)
    unselected[rows] = False
    assert torch.equal(out[unselected], x[unselected])  # bit for bit
    branch64 = torch.nn.Linear(8, 8).to(DEVICE, torch.float64)
    branch64.load_state_dict(branch.state_dict())
    with torch.no_grad():
        expected = oracle_output(x.double(), branch64, rows, kept)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(out.double(), expected, **tolerance)


@pytest.mark.parametrize("num_samples,p", [(1, 0.5), (2, 0.1), (2, 0.99), (7, 0.3), (7, 0.99), (64, 0.1),
                                           (64, 0.5), (64, 0.99), (10, 0.3), (5, 0.4)])
def test_branch_called_once_on_k_samples(num_samples, p):
    # (10, 0.3) and (5, 0.4): N (1 - p) is just below an integer in float64; rounding gives 7 and 3.
    branch = RecordingBranch()
    x = torch.randn(num_samples, 5, device=DEVICE)
    out = run(x, branch, p, "torch")
    kept = max(1, int(num_samples * (1 - p)))
    assert branch.calls == [((kept, 5), True)]
    assert ((out != x).any(1)).sum() == kept
    assert subset_size(num_samples, p) == kept
    assert {(10, 0.3): 7, (5, 0.4): 3}.get((num_samples, p), kept) == kept


def test_branch_called_once_on_k_samples_triton():
    branch = RecordingBranch()
    x = torch.randn(7, 3, 2, device=DEVICE)
    out = run(x, branch, 0.5, "triton")
    assert branch.calls == [((3, 3, 2), True)]
    assert ((out != x).flatten(1).any(1)).sum() == 3


def test_p_zero_eval_and_p_one(backend):
    x, branch = sample_inputs((6, 4))
    for out in (rk.drop_path_residual(x, branch, 0.0, backend=backend),
                rk.drop_path_residual(x, branch, 0.5, training=False, backend=backend)):
        torch.testing.assert_close(out, x + branch(x), rtol=0, atol=0)
    recording = RecordingBranch()
    assert rk.drop_path_residual(x, recording, 1.0, backend=backend) is x
    assert recording.calls == []
    assert rk.drop_path_residual(x, recording, 1.0, training=False, backend=backend).shape == x.shape
    assert recording.calls == [((6, 4), True)]


def test_empty_batch_is_x_plus_branch_of_it(backend):
    x = torch.randn(0, 4, device=DEVICE)
    recording = RecordingBranch()
    out = rk.drop_path_residual(x, recording, 0.5, backend=backend)
    assert out.shape == (0, 4) and recording.calls == [((0, 4), True)]


@pytest.mark.parametrize("x_dtype,branch_dtype,out_dtype", [(torch.float32, torch.bfloat16, torch.float32),
                                                            (torch.bfloat16, torch.float32, torch.float32),
                                                            (torch.float16, torch.float16, torch.float16)])
def test_result_dtype_follows_type_promotion(backend, x_dtype, branch_dtype, out_dtype):
    x, _ = sample_inputs((8, 16), x_dtype)
    branch = torch.nn.Linear(16, 16).to(DEVICE, branch_dtype)
    x.requires_grad_()
    out = run(x, lambda t: branch(t.to(branch_dtype)), 0.5, backend)
    assert out.dtype == out_dtype
    rows, kept = oracle_subset(8, 0.5)
    with torch.no_grad():
        y = branch(x[rows].to(branch_dtype)).float()
        expected = x.float().index_add(0, rows, y * subset_scale(8, kept))
    assert torch.equal(out, expected.to(out_dtype))  # fp32 math, rounded once
    out.sum().backward()
    assert x.grad.dtype == x_dtype and branch.weight.grad.dtype == branch_dtype


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("p,reduce", [(0.3, False), (0.5, True), (0.0, False)])
def test_gradients_match_float64_formula(backend, p, reduce):
    # reduce: out.sum() hands backward an expanded (stride-0) gradient.
    torch.manual_seed(0)
    branch = torch.nn.Sequential(torch.nn.LayerNorm(6), torch.nn.Linear(6, 12), torch.nn.GELU(),
                                 torch.nn.Linear(12, 6)).to(DEVICE)
    branch64 = torch.nn.Sequential(torch.nn.LayerNorm(6), torch.nn.Linear(6, 12), torch.nn.GELU(),
                                   torch.nn.Linear(12, 6)).to(DEVICE, torch.float64)
    branch64.load_state_dict(branch.state_dict())
    x = torch.randn(9, 2, 6, device=DEVICE, requires_grad=True)
    grad_out = torch.randn(9, 2, 6, device=DEVICE)
    out = run(x, branch, p, backend)
    loss = out.sum() if reduce else (out * grad_out).sum()
    grads = torch.autograd.grad(loss, [x] + list(branch.parameters()))

    x64 = x.detach().double().requires_grad_()
    if p > 0:
        rows, kept = oracle_subset(9, p)
        expected = oracle_output(x64, branch64, rows, kept)
    else:
        expected = x64 + branch64(x64)
    loss64 = expected.sum() if reduce else (expected * grad_out.double()).sum()
    expected_grads = torch.autograd.grad(loss64, [x64] + list(branch64.parameters()))
    for name, got, want in zip(["x"] + [n for n, _ in branch.named_parameters()], grads, expected_grads):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=name)


def test_backward_keeps_no_n_row_tensor_but_the_outputs():
    # Saved for backward by our ops: the subset's indices (k int64 values); the branch saves its own.
    x = torch.randn(32, 64, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        run(x, lambda t: t * 3.0, 0.5, "torch").sum().backward()
    assert all(t.numel() <= 32 for t in saved), [t.shape for t in saved]


def test_non_contiguous_x_and_x_without_gradient(backend):
    base, branch = sample_inputs((6, 4, 4))
    x = base.transpose(1, 2)  # not contiguous
    out = run(x, branch, 0.5, backend)
    assert torch.equal(out, run(x.contiguous(), branch, 0.5, backend))
    out.sum().backward()  # x needs no gradient; the branch's weights get theirs
    rows, kept = oracle_subset(6, 0.5)
    expected = torch.autograd.grad(oracle_output(x, branch, rows, kept).sum(), branch.weight)[0]
    torch.testing.assert_close(branch.weight.grad, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the RNG across backends


def cuda_keys(seed, num_samples):
    keys = torch.empty(num_samples, dtype=torch.int64)
    _backend._C.drop_path_residual_keys_host(**_subset_keys_cuda_arguments(seed, keys))
    return keys


@pytest.mark.parametrize("num_samples", [1, 3, 4, 130])
@pytest.mark.parametrize("seed", [0, -(1 << 63), (1 << 62) + 12345])
def test_same_keys_and_subset_on_every_backend(num_samples, seed):
    seed = torch.tensor([seed], device=DEVICE)
    expected = reference.subset_keys(seed, num_samples)
    samples = torch.arange(num_samples, device=DEVICE)
    assert torch.equal(expected & 0xFFFFFFFF, samples)  # ties between words broken by the index
    kept = max(1, num_samples // 3)
    rows, slot = subset_op(seed, num_samples, kept, "torch")
    assert torch.equal(rows, torch.sort(torch.argsort(expected)[:kept]).values)
    assert torch.equal(slot[rows], torch.arange(kept, device=DEVICE)) and (slot >= 0).sum() == kept
    for backend in ["triton"] + (["cuda"] if DEVICE.type == "cuda" else []):
        triton_rows, triton_slot = subset_op(seed, num_samples, kept, backend)
        assert torch.equal(triton_rows, rows) and torch.equal(triton_slot, slot), backend
    if _backend._C is not None:
        assert torch.equal(cuda_keys(seed.cpu(), num_samples), expected.cpu())


def test_selection_frequencies_within_binomial_bounds():
    # N = 7, k = 3: each sample is kept with probability 3/7 and each pair with 1/7;
    # N = 5, k = 2: each of the 10 subsets has probability 1/10. Bounds of 5 standard deviations.
    draws = 1000
    generator = torch.Generator(device=DEVICE).manual_seed(7)
    counts, pair_counts, subset_counts = torch.zeros(7), torch.zeros(7, 7), {}
    for _ in range(draws):
        rows, _ = subset_op(draw_seed(DEVICE, generator), 7, subset_size(7, 0.5), "torch")
        member = torch.zeros(7)
        member[rows.cpu()] = 1
        counts += member
        pair_counts += member[:, None] * member[None, :]
        subset = tuple(subset_op(draw_seed(DEVICE, generator), 5, subset_size(5, 0.5), "torch")[0].tolist())
        subset_counts[subset] = subset_counts.get(subset, 0) + 1

    def assert_binomial(count, probability):
        mean, deviation = draws * probability, math.sqrt(draws * probability * (1 - probability))
        assert abs(count - mean) < 5 * deviation, (count, mean)

    for n in range(7):
        assert_binomial(counts[n].item(), 3 / 7)
    for n, m in itertools.combinations(range(7), 2):
        assert_binomial(pair_counts[n, m].item(), 1 / 7)
    assert sorted(subset_counts) == list(itertools.combinations(range(5), 2))
    for count in subset_counts.values():
        assert_binomial(count, 1 / 10)


def test_same_seed_same_output_and_generator_reproduces(backend):
    x, branch = sample_inputs((8, 4))
    with torch.no_grad():
        first, second = run(x, branch, 0.5, backend), run(x, branch, 0.5, backend)
        assert torch.equal(first, second)
        generated = [rk.drop_path_residual(x, branch, 0.5, generator=torch.Generator(DEVICE).manual_seed(3),
                                           backend=backend) for _ in range(2)]
    assert torch.equal(generated[0], generated[1])


@pytest.mark.parametrize("x_dtype,branch_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)])
def test_triton_output_and_gradients_equal_torch_backend(x_dtype, branch_dtype):
    # Rows of 2048 + 24 elements: two programs per row, the second partial.
    x, _ = sample_inputs((5, 2072), x_dtype)
    branch = torch.nn.Linear(2072, 2072).to(DEVICE, branch_dtype)
    grad_out = torch.randn(5, 2072, device=DEVICE)
    results = []
    for backend in ("torch", "triton"):
        x.grad = None
        out = run(x.requires_grad_(), lambda t: branch(t.to(branch_dtype)), 0.5, backend)
        x_grad, = torch.autograd.grad(out, x, grad_out.to(out.dtype))
        results.append((out, x_grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# ----------------------------------------------------------------------------- the CUDA code on the CPU


def offset_randn(*shape, dtype, offset):
    """A CPU tensor starting `offset` elements into its storage (1: the 16-byte vectors are off)."""
    flat = torch.randn(offset + math.prod(shape)).to(dtype)
    return flat[offset:].view(shape)


@pytest.mark.skipif(_backend._C is None, reason=f"CUDA extension not built: {_backend.CUDA_EXTENSION_ERROR}")
@pytest.mark.parametrize("a_dtype,b_dtype,out_dtype", [(torch.float32, torch.float32, torch.float32),
                                                       (torch.bfloat16, torch.bfloat16, torch.bfloat16),
                                                       (torch.float32, torch.bfloat16, torch.float32),
                                                       (torch.float16, torch.float32, torch.float32),
                                                       (torch.float32, torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("row_size,offset", [(16, 0), (2048 + 24, 0), (13, 0), (16, 1)])
@pytest.mark.parametrize("has_a", [True, False])
def test_rows_kernel_code_equals_torch_backend(a_dtype, b_dtype, out_dtype, row_size, offset, has_a):
    # (2048 + 24): two blocks per row, the second partial; 13 and offset 1: the scalar path.
    rows, kept = 6, 3
    b = offset_randn(kept, row_size, dtype=b_dtype, offset=offset)
    if has_a:
        a = offset_randn(rows, row_size, dtype=a_dtype, offset=offset)
        index = torch.tensor([-1, 0, -1, -1, 1, 2])
    else:
        a, index = None, torch.tensor([2, 0, 1, 2, 0, 1])
    out = torch.empty(rows, row_size, dtype=out_dtype)
    scale = subset_scale(rows, kept)
    _backend._C.drop_path_residual_rows_host(**_combine_rows_cuda_arguments(a, b, index, out, scale))
    if has_a:
        expected = reference.add_rows(a, b, torch.tensor([1, 4, 5]), scale)
    else:
        expected = reference.gather_rows(b, index, scale)
    assert torch.equal(out, expected.to(out_dtype))


# ----------------------------------------------------------------------------- registration and compile


def test_opcheck(backend):
    x = torch.randn(7, 3, 8, device=DEVICE, requires_grad=True)
    seed = torch.tensor([42], device=DEVICE)
    torch.library.opcheck(subset_op.custom_op, (seed, 7, 3, backend))
    rows, slot = subset_op(seed, 7, 3, backend)
    torch.library.opcheck(gather_op.custom_op, (x.detach(), rows, True, torch.bfloat16, backend))
    y = torch.randn(3, 3, 8, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    torch.library.opcheck(residual_add_op.custom_op, (x, y, rows, slot, True, torch.float32, backend))


def test_compile_fullgraph_three_batch_sizes(backend):
    branch = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)).to(DEVICE)

    def block(x):
        return rk.drop_path_residual(x, branch, 0.3, backend=backend).square().mean()

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(block, fullgraph=True)
    for num_samples in (10, 5, 13):  # 10 (1 - 0.3) is just below 7 in float64, and rounds to it
        x = torch.randn(num_samples, 2, 8, device=DEVICE, requires_grad=True)
        torch._dynamo.mark_dynamic(x, 0)
        torch.manual_seed(SEED)
        loss = compiled(x)
        loss.backward()
        grad, x.grad = x.grad, None
        torch.manual_seed(SEED)
        eager_loss = block(x)
        eager_loss.backward()
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, x.grad, rtol=1e-6, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # k traced as a function of N


# ----------------------------------------------------------------------------- module and bad input


def test_module_matches_function_and_shows_p_and_branch(backend):
    x, branch = sample_inputs((8, 4))
    module = rk.nn.DropPathResidual(branch, 0.25)
    assert "p=0.25" in repr(module) and "Linear(in_features=4" in repr(module)
    with torch.no_grad():
        torch.manual_seed(SEED)
        got = module(x)
        assert torch.equal(got, run(x, branch, 0.25, None))
        module.eval()
        torch.testing.assert_close(module(x), x + branch(x), rtol=0, atol=0)
    with pytest.raises(ValueError):
        rk.nn.DropPathResidual(branch, 1.5)


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_bad_p_raises_value_error(p):
    with pytest.raises(ValueError, match="p must be in"):
        rk.drop_path_residual(torch.randn(4, 2), lambda t: t, p)


def test_bad_branch_output_and_0d_x_raise():
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"branch output has shape \(4, 3\), but its input x\[S\] has shape \(4, 4\)"):
        rk.drop_path_residual(x, lambda t: t[:, :3], 0.5)
    with pytest.raises(ValueError, match=r"branch output has shape \(8, 1\).*\(8, 4\)"):
        rk.drop_path_residual(x, lambda t: t[:, :1], 0.5, training=False)
    with pytest.raises(ValueError, match="0-d"):
        rk.drop_path_residual(torch.tensor(1.0), lambda t: t, 0.5)
    with pytest.raises(TypeError, match="callable"):
        rk.drop_path_residual(x, 3, 0.5)
    with pytest.raises(TypeError, match="float64"):
        rk.drop_path_residual(x, lambda t: t.double(), 0.5)


# ----------------------------------------------------------------------------- GPU only


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")
def test_no_host_sync(backend):
    if backend == "torch":
        pytest.skip("the reference is not a hot path")
    x, branch = sample_inputs((64, 8, 32))
    x.requires_grad_()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rk.drop_path_residual(x, branch, 0.3, backend=backend).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")
def test_cuda_graph_replays_draw_fresh_subsets(backend):
    x = torch.zeros(64, 256, device=DEVICE)
    ones = lambda t: torch.ones_like(t)  # noqa: E731
    rk.drop_path_residual(x, ones, 0.5, backend=backend)  # compile the kernels outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = rk.drop_path_residual(x, ones, 0.5, backend=backend)
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)
    assert ((out != 0).any(1)).sum().item() == 32 and torch.all((out == 0) | (out == 2.0))
