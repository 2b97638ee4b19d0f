"""Linear layers over per-expert token groups, with one weight gradient accumulated in place.

Expert ``j`` uses a prefix slice of one shared weight ``W`` [out, in]:

* ``input`` slicing (``qkv``, ``fc1``): ``y_j = x_j[:, :d_j] @ W[:, :d_j].T + b`` -> [rows_j, out], every group
  written straight into its row range of one output [sum rows_j, out] (no concatenation afterwards). The slice
  ``x_j[:, :d_j]`` is taken inside, so a full-width group's input gradient is ``g_j @ W`` itself, not a copy of
  it into a zero-filled tensor (what autograd does for a slice), and narrower ones are padded once;
* ``output`` slicing (``proj``, ``fc2``): ``y_j = h_j @ W[:d_j].T + b[:d_j]`` -> [rows_j, d_j].

Left to autograd, each slice ``W[:, :d_j]`` gets its own zero-filled full-size gradient and the E of them are
summed: E fills and E additions of the whole weight per layer and step. The functions here write every group's
contribution straight into one gradient (``grad_W[:, :d_j] += g_j.T @ x_j``), so the weight is touched once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["nested_input_linear", "nested_output_linear", "split_rows"]


def split_rows(rows: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``rows`` [sum sizes, ...] as one view per group; a single group is ``rows`` itself.

    The backward of a one-piece ``split`` would copy the whole gradient (a ``cat`` of one tensor).
    """
    return [rows] if len(sizes) == 1 else list(rows.split(list(sizes)))


def _weight_grad(
    weight: torch.Tensor,
    grads: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    widths: Sequence[int],
    slicing: str,
) -> torch.Tensor:
    """``sum_j Pad(g_j.T @ x_j)``: each group's [out, d_j] (input slicing) or [d_j, in] (output slicing) block."""
    full = weight.shape[1] if slicing == "input" else weight.shape[0]
    widest = max(range(len(widths)), key=lambda j: widths[j])
    if widths[widest] == full:  # the full-width group writes the whole gradient; no zero fill needed
        grad = grads[widest].t().mm(inputs[widest])
    else:
        grad = torch.zeros_like(weight)
    for j, (g, x, d) in enumerate(zip(grads, inputs, widths)):
        if j == widest and d == full:
            continue
        block = grad[:, :d] if slicing == "input" else grad[:d]
        block.addmm_(g.t(), x)
    return grad


def _bias_grad(bias: torch.Tensor, grads: Sequence[torch.Tensor], widths: Sequence[int]) -> torch.Tensor:
    grad = torch.zeros_like(bias)
    for g, d in zip(grads, widths):
        grad[:d] += g.sum(0)
    return grad


def _to_dtype(tensors: Sequence[torch.Tensor | None], dtype: torch.dtype) -> list[torch.Tensor | None]:
    """Saved tensors in the gradients' dtype: under autocast the forward ran in a lower precision than they hold."""
    return [t if t is None else t.to(dtype) for t in tensors]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in: autocast's when it is on (``out=`` ops are not autocast for us)."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


def _input_linear(
    xs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, widths: Sequence[int]
) -> torch.Tensor:
    dtype = _compute_dtype(xs[0])
    weight = weight.to(dtype)
    out = torch.empty(sum(x.shape[0] for x in xs), weight.shape[0], dtype=dtype, device=weight.device)
    for x, d, rows in zip(xs, widths, out.split([x.shape[0] for x in xs])):
        if bias is None:
            torch.mm(x[:, :d].to(dtype), weight[:, :d].t(), out=rows)
        else:
            torch.addmm(bias.to(dtype), x[:, :d].to(dtype), weight[:, :d].t(), out=rows)
    return out


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, width: int) -> torch.Tensor:
    """Gradient of a full-width input [rows, in] whose first ``width`` features fed ``W[:, :width]``."""
    grad_x = grad.mm(weight[:, :width])  # [rows, width]
    return grad_x if width == weight.shape[1] else F.pad(grad_x, (0, weight.shape[1] - width))


def _output_linear(
    hs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, widths: Sequence[int]
) -> list[torch.Tensor]:
    return [F.linear(h, weight[:d], None if bias is None else bias[:d]) for h, d in zip(hs, widths)]


def _needs_autograd(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _NestedInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, widths, weight, bias, *xs):  # type: ignore[override]
        ctx.widths = widths
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, *xs)
        return _input_linear(xs, weight, bias, widths)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        weight, *xs = _to_dtype(ctx.saved_tensors, grad.dtype)
        widths = ctx.widths
        grads = grad.split([x.shape[0] for x in xs])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(weight, grads, [x[:, :d] for x, d in zip(xs, widths)], widths, "input")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        needs = ctx.needs_input_grad[3:]
        grad_xs = [_input_grad(g, weight, d) if need else None for g, d, need in zip(grads, widths, needs)]
        return (None, grad_weight, grad_bias, *grad_xs)


class _NestedOutputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, widths, weight, bias, *hs):  # type: ignore[override]
        ctx.widths = widths
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, bias, *hs)
        return tuple(_output_linear(hs, weight, bias, widths))

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        weight, bias, *hs = _to_dtype(ctx.saved_tensors, grads[0].dtype)
        widths = ctx.widths
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(weight, grads, hs, widths, "output")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = _bias_grad(bias, grads, widths)
        grad_hs = [g.mm(weight[:d]) if need else None for g, d, need in zip(grads, widths, ctx.needs_input_grad[3:])]
        return (None, grad_weight, grad_bias, *grad_hs)


def nested_input_linear(
    xs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, widths: Sequence[int]
) -> torch.Tensor:
    """Per group ``x_j[:, :d_j] @ W[:, :d_j].T + b``, the groups' rows one after the other.

    Args:
        xs: one group per expert, each [rows_j, in] at full width (views are fine); group ``j`` reads its first
            ``d_j`` features and gets a zero gradient for the others.
        weight: the shared weight [out, in].
        bias: [out] or ``None``.
        widths: ``d_j`` of each group (``<= in``).

    Returns:
        [sum_j rows_j, out]: group 0's rows, then group 1's, ...
    """
    if not _needs_autograd(weight, bias, *xs):  # inference: no autograd node to build
        return _input_linear(xs, weight, bias, widths)
    return _NestedInputLinear.apply(tuple(widths), weight, bias, *xs)


def nested_output_linear(
    hs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, widths: Sequence[int]
) -> list[torch.Tensor]:
    """Per group ``h_j @ W[:d_j].T + b[:d_j]``.

    Args:
        hs: one group per expert, each [rows_j, in].
        weight: the shared weight [out, in].
        bias: [out] or ``None``.
        widths: ``d_j`` of each group (``<= out``).

    Returns:
        One output per group, [rows_j, d_j].
    """
    if not _needs_autograd(weight, bias, *hs):
        return _output_linear(hs, weight, bias, widths)
    return list(_NestedOutputLinear.apply(tuple(widths), weight, bias, *hs))
