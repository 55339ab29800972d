"""PyTorch adapter: drop-ins for ``torch.nn.functional`` on CPU tensors.

``softmax``, ``log_softmax`` and ``cross_entropy`` are ``torch.autograd.Function``s:
the forward runs fastmax's kernels on the tensors' memory (zero-copy through
NumPy), the backward runs fastmax's VJP or its fused cross-entropy gradient.
CPU float32/float64 tensors only; anything else raises ``TypeError``.
"""

from __future__ import annotations

import numpy as np
import torch

import fastmax

__all__ = ["softmax", "log_softmax", "cross_entropy"]

_DTYPES = (torch.float32, torch.float64)


def _array(t: torch.Tensor, name: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastmax.torch: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise TypeError(f"fastmax.torch: {name} is on {t.device}; only CPU tensors are supported")
    if t.dtype not in _DTYPES:
        raise TypeError(f"fastmax.torch: {name} has dtype {t.dtype}; expected float32 or float64")
    return t.detach().numpy()


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, dim, log):
        y = torch.from_numpy(
            (fastmax.log_softmax if log else fastmax.softmax)(_array(input, "input"), axis=dim)
        )
        ctx.save_for_backward(y)
        ctx.dim, ctx.log = dim, log
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        vjp = fastmax.log_softmax_vjp if ctx.log else fastmax.softmax_vjp
        g = grad.detach().to(y.dtype).numpy()
        return torch.from_numpy(vjp(y.numpy(), g, axis=ctx.dim)), None, None


def softmax(input: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.nn.functional.softmax(input, dim)`` computed by fastmax."""
    return _Softmax.apply(input, dim, False)


def log_softmax(input: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.nn.functional.log_softmax(input, dim)`` computed by fastmax."""
    return _Softmax.apply(input, dim, True)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing):
        x = _array(input, "input")
        if target.device.type != "cpu":
            raise TypeError("fastmax.torch: target must be a CPU tensor")
        t = target.detach().numpy()
        w = None if weight is None else _array(weight, "weight")
        kw = dict(
            axis=1 if x.ndim > 1 else 0,
            weight=w,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
        ctx.fused = None
        if input.requires_grad and reduction != "none":
            # One fused pass: the loss and its gradient for grad=1, scaled later.
            loss, dx = fastmax.softmax_cross_entropy_with_grad(x, t, **kw)
            ctx.fused = torch.from_numpy(dx)
        else:
            loss = fastmax.softmax_cross_entropy(x, t, **kw)
        ctx.save_for_backward(input, target)
        ctx.kw = kw
        return torch.as_tensor(np.asarray(loss))

    @staticmethod
    def backward(ctx, grad):
        if ctx.fused is not None:
            # The fused gradient is ours alone: used once, scaled in place (no
            # second buffer).  A second backward (retain_graph) recomputes.
            dx, ctx.fused = ctx.fused, None
            if not bool(grad == 1):
                dx.mul_(grad.to(dx.dtype))
            return dx, None, None, None, None, None
        input, target = ctx.saved_tensors
        g = grad.detach().to(input.dtype).numpy()
        dx = fastmax.softmax_cross_entropy_backward(
            input.detach().numpy(), target.numpy(), g if g.ndim else float(g), **ctx.kw
        )
        return torch.from_numpy(dx), None, None, None, None, None


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy`` computed by fastmax (class axis 1,
    or 0 for an unbatched input), with the fused forward+backward pass."""
    return _CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing)
