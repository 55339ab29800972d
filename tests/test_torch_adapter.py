"""fastmax.torch: drop-ins for torch.nn.functional, differentiable with autograd."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional test dependency")
import torch.nn.functional as F  # noqa: E402

import fastmax.torch as ft  # noqa: E402


@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_matches_and_gradchecks(name, dim):
    x = torch.randn(5, 7, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(getattr(ft, name)(x, dim), getattr(F, name)(x, dim=dim))
    assert torch.autograd.gradcheck(lambda t: getattr(ft, name)(t, dim), (x,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_and_gradchecks(reduction, smoothing, weighted):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.tensor([0, 4, -100, 2, 1, 3])
    w = torch.rand(5, dtype=torch.float64, generator=gen) + 0.1 if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    torch.testing.assert_close(ft.cross_entropy(x, t, **kw), F.cross_entropy(x, t, **kw))
    assert torch.autograd.gradcheck(lambda a: ft.cross_entropy(a, t, **kw), (x,))
    # probability targets and the (N, C, d) layout
    q = torch.softmax(torch.randn(6, 5, 2, dtype=torch.float64, generator=gen), dim=1)
    x3 = torch.randn(6, 5, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    torch.testing.assert_close(ft.cross_entropy(x3, q, **kw), F.cross_entropy(x3, q, **kw))
    assert torch.autograd.gradcheck(lambda a: ft.cross_entropy(a, q, **kw), (x3,))


def test_float32_training_step_matches():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 100, generator=gen, requires_grad=True)
    t = torch.randint(0, 100, (64,), generator=gen)
    loss = ft.cross_entropy(x, t)
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.cross_entropy(x2, t).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_rejected_tensors():
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.softmax(torch.ones(3, dtype=torch.float16), 0)
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.softmax(torch.ones(3, dtype=torch.int64), 0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ft.softmax(np.ones(3), 0)


def test_backward_twice_with_retain_graph():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randint(0, 6, (8,), generator=gen)
    loss = ft.cross_entropy(x, t) * 3.0
    loss.backward(retain_graph=True)
    loss.backward()
    x2 = x.detach().clone().requires_grad_(True)
    loss2 = F.cross_entropy(x2, t) * 3.0
    loss2.backward(retain_graph=True)
    loss2.backward()
    torch.testing.assert_close(x.grad, x2.grad)
