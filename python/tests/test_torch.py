"""zlpr.torch against the package's PyTorch reference and the float64 oracle: forward and
backward in fp32/fp16/bf16, reductions, masks, sparse targets, no-grad calls, and
torch.compile of the surrounding model (when this PyTorch has it)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import zlpr  # noqa: E402
from conftest import reference  # noqa: E402
from zlpr.torch import ZlprLoss, ZlprLossReference, zlpr_loss_reference  # noqa: E402


@pytest.fixture(scope="module")
def loss_fn(client):
    return ZlprLoss(client, reduction="none")


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float16, 2e-3),
                                        (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_forward_and_backward_match_the_reference(client, dtype, atol, reduction):
    torch.manual_seed(1)
    x = (torch.randn(9, 133) * 2).to(dtype).requires_grad_()
    t = torch.rand(9, 133)  # soft targets
    remote = ZlprLoss(client, reduction=reduction)(x, t)
    w = torch.randn_like(remote)  # an arbitrary grad_output
    (remote * w).sum().backward()
    x64 = x.detach().double().requires_grad_()
    local = zlpr_loss_reference(x64, t.double(), reduction=reduction)
    (local * w.double()).sum().backward()
    assert remote.dtype == torch.float32
    np.testing.assert_allclose(remote.detach().numpy(), local.detach().numpy(), rtol=2e-6,
                               atol=1e-5)
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad.double().numpy(), x64.grad.numpy(), atol=atol * 10)


def test_the_reference_matches_the_float64_oracle():
    rng = np.random.default_rng(2)
    s = (rng.standard_normal((7, 50)) * 4).astype(np.float64)
    s[0, :] = -np.inf  # a fully excluded row
    s[1, 3] = -np.inf
    t = rng.random((7, 50))
    mask = (rng.random((7, 50)) < 0.7).astype(np.uint8)
    x = torch.tensor(s, requires_grad=True)
    loss = zlpr_loss_reference(x, torch.tensor(t), torch.tensor(mask), reduction="none")
    loss.sum().backward()
    want_loss, want_grad = reference(s, t, mask)
    np.testing.assert_allclose(loss.detach().numpy(), want_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), want_grad, atol=1e-12)
    assert loss[0].item() == 0 and torch.all(x.grad[0] == 0)


def test_mask_sparse_targets_and_no_grad(loss_fn):
    torch.manual_seed(3)
    x = torch.randn(4, 30, requires_grad=True)
    t = (torch.rand(4, 30) < 0.2).float()
    mask = (torch.rand(4, 30) < 0.8).to(torch.uint8)
    remote = loss_fn(x, t, mask)
    remote.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    local = zlpr_loss_reference(x2, t, mask, reduction="none")
    local.sum().backward()
    torch.testing.assert_close(remote, local, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=2e-6)
    splits, indices = [0], []
    for row in t:
        indices += torch.nonzero(row).flatten().tolist()
        splits.append(len(indices))
    sparse = loss_fn(x.detach(), zlpr.SparseLabels(splits, indices), mask)
    torch.testing.assert_close(sparse, remote.detach(), rtol=0, atol=0)
    with torch.no_grad():
        assert not loss_fn(x, t).requires_grad
    assert set(ZlprLoss(loss_fn.client).stats) == set()  # filled by a forward
    loss_fn(x, t)
    assert {"to_host_s", "call_s", "server_queue_s", "server_compute_s"} <= set(loss_fn.stats)


def test_a_model_trains_the_same_with_the_remote_and_the_local_loss(client):
    def train(loss_fn):
        torch.manual_seed(5)
        model = torch.nn.Linear(16, 12)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        x = torch.randn(128, 16)
        t = torch.rand(128, 12)
        losses = []
        for _ in range(20):
            opt.zero_grad()
            loss = loss_fn(model(x), t)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, model.weight.detach()
    remote_losses, remote_w = train(ZlprLoss(client))
    local_losses, local_w = train(ZlprLossReference())
    np.testing.assert_allclose(remote_losses, local_losses, rtol=1e-5)
    torch.testing.assert_close(remote_w, local_w, rtol=1e-5, atol=1e-6)
    assert remote_losses[-1] < remote_losses[0]


@pytest.fixture
def compile_available(request):
    if not hasattr(torch, "compile"):
        if request.config.getoption("--require-torch-compile"):
            pytest.fail(f"PyTorch {torch.__version__} has no torch.compile")
        pytest.skip(f"PyTorch {torch.__version__} has no torch.compile")


def test_torch_compile_of_the_surrounding_model(client, compile_available):
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    compiled = torch.compile(model)
    x, t = torch.randn(10, 8), torch.rand(10, 5)
    remote = ZlprLoss(client)(compiled(x), t)
    remote.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    zlpr_loss_reference(model(x), t).backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_torch_compile_of_a_step_with_the_remote_loss_inside(client, compile_available):
    """The loss inside the compiled function: Dynamo breaks the graph at it and runs it eagerly;
    the loss and the gradients must be those of the local reference, on the first (compiling)
    call and on the later ones (cached graphs), with shapes that change."""
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    loss_fn = ZlprLoss(client)

    def step(x, t):
        return loss_fn(model(x), t) * 2.0

    compiled = torch.compile(step)
    for rows in (10, 10, 7):
        x, t = torch.randn(rows, 8), torch.rand(rows, 5)
        model.zero_grad()
        loss = compiled(x, t)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        want = zlpr_loss_reference(model(x), t) * 2.0
        want.backward()
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_logits_are_copied_to_the_host_and_the_gradient_back(client, dtype):
    torch.manual_seed(8)
    x = (torch.randn(6, 70) * 2).to("cuda", dtype).requires_grad_()
    t = torch.rand(6, 70, device="cuda")
    mask = (torch.rand(6, 70, device="cuda") < 0.8).to(torch.uint8)
    loss = ZlprLoss(client, reduction="sum")(x, t, mask)
    loss.backward()
    assert loss.device.type == "cuda" and x.grad.device.type == "cuda" and x.grad.dtype == dtype
    x64 = x.detach().cpu().double().requires_grad_()
    want = zlpr_loss_reference(x64, t.cpu().double(), mask.cpu(), reduction="sum")
    want.backward()
    torch.testing.assert_close(loss.cpu().double(), want.detach(), rtol=1e-5, atol=1e-5)
    atol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad.cpu().double(), x64.grad, rtol=0, atol=atol)
