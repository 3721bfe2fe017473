"""A whole training step under torch.compile(fullgraph=True), every op family inside one graph:
cutmix_or_mixup -> dropout_add -> drop_path_add -> dropout -> cross_entropy on a MixedTarget
-> backward -> an SGD update -> ModelEMA.update. (torch.optim's step() breaks dynamo's graph
under trace_autograd_ops, so the test updates the parameters by hand.)"""
import pytest
import torch

import recipe_kernels as rk

from conftest import DEVICE


class Net(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.inp = torch.nn.Linear(3 * 8 * 8, 32)
        self.hidden = torch.nn.Linear(32, 32, bias=False)
        self.hidden_bias = torch.nn.Parameter(torch.zeros(32))
        self.out = torch.nn.Linear(32, 10)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        h = rk.dropout_add(self.hidden(h), h, 0.1, bias=self.hidden_bias, backend=self.backend)
        h = rk.drop_path_add(self.hidden(h), h, 0.2, backend=self.backend)
        return self.out(rk.dropout(h, 0.1, backend=self.backend))


def test_whole_training_step_compiles_into_one_graph(backend, monkeypatch):
    # Dynamo traces loss.backward() only with this switch; fullgraph=True then holds the step in one graph.
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", True)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net(backend).to(DEVICE)
    ema = rk.ModelEMA(model, decay=0.9, backend=backend)

    def step(x, y):
        x, mixed = rk.cutmix_or_mixup(x, y, per_sample=True, backend=backend)
        loss = rk.cross_entropy(model(x), mixed, label_smoothing=0.1, backend=backend)
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.1 * parameter.grad
                parameter.grad = None
        ema.update(model)
        return loss.detach()

    compiled = torch.compile(step, fullgraph=True)
    # Two full batches, then the smaller last batch of an epoch (a new N: the step recompiles with N symbolic).
    for batch in (8, 8, 5):
        x = torch.rand(batch, 3, 8, 8, device=DEVICE)
        y = torch.arange(batch, device=DEVICE) % 10
        before = {name: value.clone() for name, value in model.state_dict().items()}
        ema_before = {name: value.clone() for name, value in ema.module.state_dict().items()}
        loss = compiled(x, y)
        assert torch.isfinite(loss) and loss > 0
        for name, value in model.state_dict().items():
            assert not torch.equal(value, before[name]), f"{name} was not trained"
            # The EMA inside the graph followed e <- 0.9 e + 0.1 p with the updated parameters.
            expected = 0.9 * ema_before[name] + 0.1 * value
            torch.testing.assert_close(ema.module.state_dict()[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs a GPU")
def test_training_step_under_cuda_graphs(backend):
    if backend == "torch":
        pytest.skip("the reference backend is not what CUDA graphs are for")
    torch._dynamo.reset()
    model = Net(backend).to(DEVICE)

    def forward(x, y):
        x, mixed = rk.cutmix_or_mixup(x, y, per_sample=True, backend=backend)
        return rk.cross_entropy(model(x), mixed, label_smoothing=0.1, backend=backend)

    compiled = torch.compile(forward, fullgraph=True, mode="reduce-overhead")
    x = torch.rand(8, 3, 8, 8, device=DEVICE)
    y = torch.arange(8, device=DEVICE) % 10
    losses = []
    for _ in range(4):  # warm-up, record, then replays
        loss = compiled(x, y)
        loss.backward()
        losses.append(loss.detach().clone())
    assert all(torch.isfinite(value) for value in losses)
    assert not torch.equal(losses[-1], losses[-2])  # each replay draws fresh boxes and masks
