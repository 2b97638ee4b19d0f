"""Linear layers over per-expert row groups of one token tensor, with one weight gradient accumulated in place.

Tokens travel through the nested blocks as one tensor of rows [R, D], sorted so that each expert's tokens form a
contiguous row range (a :class:`GroupLayout` says where each range starts and how wide its expert is). Expert ``j``
uses a prefix slice of one shared weight ``W`` [out, in]:

* ``input`` slicing (``qkv``, ``fc1``): ``y_j = x_j[:, :d_j] @ W[:, :d_j].T + b`` -> [rows_j, out], every group
  written straight into its row range of one output [R, out];
* ``output`` slicing (``proj``, ``fc2``): ``y_j = residual_j + Pad(s_j * (h_j @ W[:d_j].T + b[:d_j]))`` -> [R, D]:
  the residual add is fused (each group's ``d_j`` outputs are accumulated into its row range of a copy of the
  residual by the GEMM itself, no padded update tensor and no concatenation), with an optional per-row scale
  ``s`` (the MLP scaling ``alpha * r + 1``).

Left to autograd, each slice ``W[:, :d_j]`` would get its own zero-filled full-size gradient and the E of them would
be summed: E fills and E additions of the whole weight per layer and step. The backward passes here write every
group's contribution straight into one gradient (``grad_W[:, :d_j] += g_j.T @ x_j``), so the weight is touched
once, and the input gradient straight into the row ranges of one tensor.

Every nested layer calls one function, :func:`grouped_linear`; which torch ops compute it (F.linear, the grouped
forward alone, or the autograd functions; per group a direct or a transposed GEMM; the residual added by the GEMM or
after it) is decided in one place, :class:`GroupedGemmPolicy`, the place a GPU grouped-GEMM kernel would go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "GEMM_POLICY",
    "GroupLayout",
    "GroupedGemmPolicy",
    "Route",
    "grouped_linear",
    "needs_autograd",
    "nested_input_linear",
    "nested_output_linear",
]


@dataclass(frozen=True)
class GroupLayout:
    """Where each expert's tokens lie in the rows [R, D] of a routed batch (empty experts left out).

    Attributes:
        widths: feature width ``d_j`` of each group (smallest expert first).
        counts: tokens per example in each group (all > 0); ``N = sum(counts)``.
        batch_size: ``B``, the number of examples (or token sequences) in the batch.

    Group ``j`` holds the rows ``[B * sum(counts[:j]), B * sum(counts[:j+1]))``. With several groups the rows are
    slot-major (row ``p * B + b`` is example ``b``'s ``p``-th token in expert order, so all R rows read as
    [N, B, D]); with one group they are in input order (row ``b * N + n``: [B, N, D]).
    """

    widths: tuple[int, ...]
    counts: tuple[int, ...]
    batch_size: int

    @classmethod
    def dense(cls, batch_size: int, num_tokens: int, width: int) -> GroupLayout:
        """One full-width group: a plain transformer's rows [B * N, D] in input order."""
        return cls((width,), (num_tokens,), batch_size)

    @classmethod
    def of_experts(cls, widths: Sequence[int], counts: Sequence[int], batch_size: int) -> GroupLayout:
        """The groups of experts with widths ``widths`` and ``counts`` tokens per example, empty experts left out."""
        present = [(d, n) for d, n in zip(widths, counts) if n > 0]
        return cls(tuple(d for d, _ in present), tuple(n for _, n in present), batch_size)

    @property
    def input_order(self) -> bool:
        """One group: the rows are in input order, [B, N, D]; otherwise slot-major, [N, B, D]."""
        return len(self.counts) == 1

    @property
    def num_tokens(self) -> int:
        """``N``, tokens per example."""
        return sum(self.counts)

    @property
    def row_ranges(self) -> list[tuple[int, int, int]]:
        """``(start, stop, width)`` of each group's rows."""
        ranges, start = [], 0
        for n, d in zip(self.counts, self.widths):
            ranges.append((start, start + self.batch_size * n, d))
            start += self.batch_size * n
        return ranges


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in: autocast's when it is on (``out=`` ops are not autocast for us)."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


Route = Literal["dense", "no_grad", "autograd"]


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records an op on ``tensors`` (``None`` for absent ones): grad mode is on and one of them
    requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@dataclass(frozen=True)
class GroupedGemmPolicy:
    """Which torch ops compute a grouped linear: every choice :func:`grouped_linear` makes, in one place.

    Each choice was made by measurement on CPU (AMD EPYC, 1 or 2 threads; the numbers are in the methods'
    docstrings); the values do not depend on them beyond round-off (tests/test_layers.py: the no-grad and autograd
    routes agree bitwise with one GEMM per group, every route, both GEMM forms and both partitions match plain sliced
    ``F.linear`` and the masked reference of ``tests/reference.py`` in float64):

    * :meth:`route`, per call: ``"dense"`` for one full-width group without a per-row scale (exactly timm's
      ``F.linear`` and the residual add, with autograd's own backward), ``"no_grad"`` where no autograd node is needed
      (the grouped forward alone, one GEMM per group), ``"autograd"`` otherwise (the grouped forward and the backward
      of ``_NestedInputLinear`` / ``_NestedOutputLinear``, one weight gradient accumulated in place).
    * :meth:`transposed`, per group: a direct GEMM, or for outputs at most ``narrow_output_width`` wide the
      transposed product ``(b.T @ a.T).T``.
    * :meth:`adds_residual`, per output layer: whether the GEMM accumulates into the residual's rows itself.
    * :meth:`by_width_block`, per inference call: one GEMM per group, or one per width block over the rows of every
      group that uses the block (fewer, taller GEMMs for small batches of wide tokens).

    GPU: this is where a grouped-GEMM kernel plugs in. On CUDA one kernel launch can run every group's GEMM
    (``[rows_j, d_j] x [d_j, out]`` or ``[rows_j, in] x [in, d_j]``, each group's row range given by
    :class:`GroupLayout`, e.g. a CUTLASS grouped GEMM or ``torch._grouped_mm``) where the CPU path loops over the
    groups: a route for such tensors (say ``"kernel"``) returned by :meth:`route`, and one more branch in
    :func:`grouped_linear` calling it, forward and backward (the backward's per-group GEMMs are the same grouped
    shapes). Nothing else in the layers changes.

    Attributes:
        narrow_output_width: outputs at most this wide are computed transposed in float32 and float64 (0: never).
        always_autograd: every call takes the ``"autograd"`` route (a benchmark that times the autograd functions,
            as ``benchmarks/step_bound.py`` does); the values are the same.
        block_min_width, block_max_rows: inference calls whose sliced dimension is at least ``block_min_width`` and
            whose rows number at most ``block_max_rows`` run by width block (:meth:`by_width_block`).
    """

    narrow_output_width: int = 8
    always_autograd: bool = False
    block_min_width: int = 384
    block_max_rows: int = 1024

    def route(self, layout: GroupLayout, full_width: int, *tensors: torch.Tensor | None, scaled: bool = False) -> Route:
        """The route of one call: ``full_width`` is the weight's sliced dimension (in for input slicing, out for
        output slicing), ``tensors`` every tensor the result depends on (``None`` for absent ones), ``scaled``
        whether a per-row scale multiplies the update."""
        if self.always_autograd:
            return "autograd"
        if not scaled and layout.widths == (full_width,):
            return "dense"
        if needs_autograd(*tensors):
            return "autograd"
        return "no_grad"

    def transposed(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether ``a @ b`` is computed as ``(b.T @ a.T).T``: ``[n, rows]`` into contiguous memory, then written
        (or added) through a transposed view.

        MKL's GEMM with an 8-wide output written straight into a strided column block is slow (direct ->
        transposed: [960, 64] x [64, 8] 42 -> 27 us, [960, 256] x [256, 8] 120 -> 80 us, [960, 192] x [192, 8]
        214 -> 61 us, or 94 us reading a column-major weight); from 16 wide on, the direct GEMM is faster. oneDNN's
        bfloat16 GEMMs run both alike (docs/lab-notebook.md, round 9).
        """
        return b.shape[1] <= self.narrow_output_width and a.dtype in (torch.float32, torch.float64)

    def adds_residual(self, residual: torch.Tensor | None, dtype: torch.dtype) -> bool:
        """Whether an output-sliced GEMM accumulates into the residual's rows itself (beta = 1): where that measures
        faster, float32 (2.7 vs 3.0 ms for a [400, 1536] x [1536, 192] update); in bfloat16 a separate add is faster
        (1.14 vs 1.25 ms)."""
        return (residual is None or residual.dtype == dtype) and dtype in (torch.float32, torch.float64)

    def by_width_block(self, layout: GroupLayout, full_width: int) -> bool:
        """Whether a no-grad call runs one GEMM per width block instead of one per group (:func:`_pieces`).

        Block ``k``, features ``[d_{k-1}, d_k)``, is used by every group from ``k`` on, whose rows are one suffix of
        the rows: the GEMMs have as many multiply-adds as the groups' but more rows, which MKL spreads better over
        threads, and each weight block is read once where the groups read ``1 + 1/2 + 1/4 + 1/8`` weights. Per layer
        at capacity 0.5, block / group time (``benchmarks/gemm_shapes.py --blocks``; AMD EPYC, 2 threads; files
        ``layer_blocks_*`` in ``benchmarks/results/amd-epyc-2threads-2026-12-07/``): ViT-B/16 and ViT-S/16 batch 1
        0.61-0.90 in float32, 0.78-0.94 in bfloat16; ViT-B/16 batch 8 (1,568 rows) 1.03-1.12; D=128 batch 64
        0.77-1.11. Whole forwards, batch 1: ViT-B/16 5-10% faster, ViT-S/16 0-7%. Hence the two limits.
        Groups must be in increasing width (EPR's layouts are). Eager only: under ``torch.compile`` and
        ``torch.export`` the row limit would put a guard on the batch size (an exported program with a dynamic batch
        could not be built), so traced graphs keep one GEMM per group; compiled, blocks also measured no faster
        (ViT-S/16, batch 1, 2 threads: float32 47.8 against 45.7 ms at 0.5, bfloat16 50.6 against 43.1 ms)."""
        widths = layout.widths
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return False
        return (len(widths) > 1 and full_width >= self.block_min_width
                and layout.batch_size * layout.num_tokens <= self.block_max_rows
                and all(a < b for a, b in zip(widths, widths[1:])))


GEMM_POLICY = GroupedGemmPolicy()  # read at every call: replace it (dataclasses.replace) to change a choice


def _mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b + bias`` [rows, n] (``bias`` [n] or ``None``); narrow outputs as a transposed view
    (:meth:`GroupedGemmPolicy.transposed`)."""
    if GEMM_POLICY.transposed(a, b):
        return (b.t().mm(a.t()) if bias is None else torch.addmm(bias[:, None], b.t(), a.t())).t()
    return a.mm(b) if bias is None else torch.addmm(bias, a, b)


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False) -> None:
    """``out = a @ b`` (``accumulate``: ``out += a @ b``) written straight into ``out``, a strided view.

    Eager: one ``out=`` GEMM (with ``accumulate``, beta = 1 on the view itself, so FlopCounterMode counts it as an
    ``addmm``), or for narrow outputs the transposed product copied or added in (the same ops eager and compiled).
    Dynamo refuses ``out=`` tensors that are not contiguous, so under ``torch.compile`` and ``torch.export`` the other
    products are written with an in-place method instead, with the same values.
    """
    if GEMM_POLICY.transposed(a, b):
        product = _mm(a, b)  # a transposed view of [n, rows] in contiguous memory
        if accumulate:
            out.add_(product)
        else:
            out.copy_(product)
    elif torch.compiler.is_compiling():
        if accumulate:
            out.addmm_(a, b)
        else:
            out.copy_(a.mm(b))
    elif accumulate:
        torch.addmm(out, a, b, out=out)
    else:
        torch.mm(a, b, out=out)


def _pieces(layout: GroupLayout, by_block: bool) -> list[tuple[int, int, int, int]]:
    """``(row start, row stop, feature lo, feature hi)`` of each GEMM of a grouped linear: per group, group ``j``'s
    rows and features ``[0, d_j)``; per width block (widths increasing), features ``[d_{k-1}, d_k)`` and the rows of
    every group from ``k`` on, one suffix of the rows (:meth:`GroupedGemmPolicy.by_width_block`)."""
    if not by_block:
        return [(start, stop, 0, d) for start, stop, d in layout.row_ranges]
    pieces, lo, rows = [], 0, layout.batch_size * layout.num_tokens
    for start, _, d in layout.row_ranges:
        pieces.append((start, rows, lo, d))
        lo = d
    return pieces


def _input_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: GroupLayout, by_block: bool = False
) -> torch.Tensor:
    """``x_j[:, :d_j] @ W[:, :d_j].T + b`` into each group's rows of one [R, out], one GEMM per group or per width
    block (a later block adds to what the earlier ones wrote)."""
    dtype = _compute_dtype(x)
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    out = torch.empty(x.shape[0], weight.shape[0], dtype=dtype, device=x.device)
    for start, stop, lo, hi in _pieces(layout, by_block):
        rows, x_k, w_k = out[start:stop], x[start:stop, lo:hi].to(dtype), weight[:, lo:hi].t()
        if lo > 0:
            torch.addmm(rows, x_k, w_k, out=rows)
        elif bias is None:
            torch.mm(x_k, w_k, out=rows)
        else:
            torch.addmm(bias, x_k, w_k, out=rows)
    return out


def _output_linear(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: GroupLayout,
    residual: torch.Tensor | None,
    scale: torch.Tensor | None,
    by_block: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``residual + Pad(scale * (h_j W[:d_j].T + b[:d_j]))`` [R, out], one GEMM per group or per width block, and
    the unscaled update of each GEMM when ``scale`` is given (per group: what the backward needs for the scale's
    gradient)."""
    dtype = _compute_dtype(h)
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    fused = scale is None and GEMM_POLICY.adds_residual(residual, dtype)
    out = h.new_zeros(h.shape[0], weight.shape[0], dtype=dtype) if residual is None else residual.clone()
    updates = []
    for start, stop, lo, hi in _pieces(layout, by_block):
        rows, h_k, w_k = out[start:stop, lo:hi], h[start:stop].to(dtype), weight[lo:hi].t()
        if fused:
            _mm_into(rows, h_k, w_k, accumulate=True)
            if bias is not None:
                rows.add_(bias[lo:hi])
            continue
        update = _mm(h_k, w_k, None if bias is None else bias[lo:hi])  # [rows, hi - lo]
        if scale is None:
            rows.add_(update)  # autocast: the update in its compute dtype, added to a wider residual (as x + f(x))
        else:
            rows.addcmul_(update, scale[start:stop])
            updates.append(update)
    return out, updates


def _dense_output_linear(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None
) -> torch.Tensor:
    """``residual + F.linear(h, W, b)`` [R, out] with autograd's own backward; the GEMM adds the residual and bias
    itself (beta = 1 on their sum) where the grouped path would (:meth:`GroupedGemmPolicy.adds_residual`)."""
    if residual is not None and bias is not None and GEMM_POLICY.adds_residual(residual, _compute_dtype(h)):
        return torch.addmm(residual + bias, h, weight.t())
    update = F.linear(h, weight, bias)
    return update if residual is None else residual + update


def _weight_grad(
    weight: torch.Tensor, grads: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], slicing: str
) -> torch.Tensor:
    """``sum_j Pad(g_j.T @ x_j)``: each group's [out, d_j] (input slicing) or [d_j, in] (output slicing) block.

    ``grads[j]`` [rows_j, out or d_j] and ``inputs[j]`` [rows_j, d_j or in]; the widths are read off their shapes.
    Input slicing builds the transpose [in, out], whose blocks ``x_j.T @ g_j`` are contiguous rows: the GEMMs
    write contiguous memory (D=64 training step at 0.5: qkv 1.17 -> 0.78 ms, fc1 1.72 -> 1.21 ms, measured).
    """
    if slicing == "input":
        return _row_block_grad(weight.shape[::-1], inputs, grads).t().contiguous()
    return _row_block_grad(weight.shape, grads, inputs)


def _row_block_grad(shape: torch.Size, left: Sequence[torch.Tensor], right: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_j Pad(left_j.T @ right_j)`` [shape]: ``left_j`` [rows_j, d_j] gives the first ``d_j`` rows."""
    width = [a.shape[1] for a in left]
    widest = max(range(len(width)), key=width.__getitem__)
    if width[widest] == shape[0]:  # the full-width group writes the whole gradient; no zero fill needed
        grad = left[widest].t().mm(right[widest])
    else:
        grad = left[0].new_zeros(shape)
    for j, (a, b, d) in enumerate(zip(left, right, width)):
        if j == widest and d == shape[0]:
            continue
        grad[:d].addmm_(a.t(), b)
    return grad


class _NestedInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layout, x, weight, bias):  # type: ignore[override]
        ctx.layout = layout
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        return _input_linear(x, weight, bias, layout)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = (t.to(grad.dtype) for t in ctx.saved_tensors)  # autocast: saved in a lower precision
        ranges = ctx.layout.row_ranges
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.empty_like(x)
            for start, stop, d in ranges:
                _mm_into(grad_x[start:stop, :d], grad[start:stop], weight[:, :d])
                grad_x[start:stop, d:] = 0  # features the group does not read
        if ctx.needs_input_grad[2]:
            grad_weight = _weight_grad(
                weight, [grad[a:b] for a, b, _ in ranges], [x[a:b, :d] for a, b, d in ranges], "input"
            )
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad.sum(0)
        return None, grad_x, grad_weight, grad_bias


class _NestedOutputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layout, h, weight, bias, residual, scale):  # type: ignore[override]
        ctx.layout = layout
        ctx.has_bias = bias is not None
        ctx.has_residual = residual is not None
        ctx.compute_dtype = _compute_dtype(h)
        out, updates = _output_linear(h, weight, bias, layout, residual, scale)
        ctx.save_for_backward(h, weight, scale, *updates)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, weight, scale, *updates = ctx.saved_tensors
        dtype = ctx.compute_dtype  # autocast: the update's gradient in its lower precision, as F.linear's would be
        h, weight = h.to(dtype), weight.to(dtype)
        ranges = ctx.layout.row_ranges
        grads = [grad[a:b, :d] for a, b, d in ranges]  # what reached each group's d_j outputs
        if scale is not None:
            grads_scaled = [(g * scale[a:b]).to(dtype) for g, (a, b, _) in zip(grads, ranges)]
        else:
            grads_scaled = [g.to(dtype) for g in grads]
        grad_h = grad_weight = grad_bias = grad_scale = None
        if ctx.needs_input_grad[1]:
            if len(ranges) == 1:
                grad_h = grads_scaled[0].mm(weight[: ranges[0][2]])
            else:
                grad_h = torch.empty_like(h)
                for g, (a, b, d) in zip(grads_scaled, ranges):
                    torch.mm(g, weight[:d], out=grad_h[a:b])
        if ctx.needs_input_grad[2]:
            grad_weight = _weight_grad(weight, grads_scaled, [h[a:b] for a, b, _ in ranges], "output")
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = torch.zeros_like(weight[:, 0])
            for g, (_, _, d) in zip(grads_scaled, ranges):
                grad_bias[:d] += g.sum(0)
        grad_residual = grad if ctx.has_residual and ctx.needs_input_grad[4] else None
        if scale is not None and ctx.needs_input_grad[5]:
            grad_scale = torch.empty_like(scale)
            for g, u, (a, b, _) in zip(grads, updates, ranges):
                torch.sum(g * u.to(g.dtype), dim=-1, keepdim=True, out=grad_scale[a:b])
        return None, grad_h, grad_weight, grad_bias, grad_residual, grad_scale


def grouped_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: GroupLayout,
    slicing: Literal["input", "output"] = "input",
    residual: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The linear layer of every nested layer: one GEMM per row group of ``x``, a prefix slice of one shared weight
    (or, for inference on small batches of wide tokens, one per width block: :meth:`GroupedGemmPolicy.by_width_block`).

    ``slicing="input"`` (``qkv``, ``fc1``): per group ``x_j[:, :d_j] @ W[:, :d_j].T + b``, written into the group's
    rows of one output [R, out]; group ``j``'s rows read their first ``d_j`` features (and get a zero gradient for the
    others). ``residual`` and ``scale`` are not used.

    ``slicing="output"`` (``proj``, ``fc2``): per group ``residual_j + Pad(s_j * (x_j @ W[:d_j].T + b[:d_j]))``
    [R, out], each group writing its first ``d_j`` features; under autocast the update is computed in autocast's
    dtype and added to the residual in the residual's dtype, as ``residual + F.linear(x, W, b)`` would be.

    Which torch ops run is :data:`GEMM_POLICY`'s choice (:class:`GroupedGemmPolicy`, where a GPU kernel would go).

    Args:
        x: rows [R, in] grouped by ``layout``.
        weight: the shared weight [out, in].
        bias: [out] or ``None``.
        layout: the groups' row ranges and widths ``d_j`` (``<= in`` for input slicing, ``<= out`` for output).
        slicing: which dimension of the weight each group slices.
        residual: rows [R, out] the update is added to; ``None``: zeros (the padded update alone).
        scale: per-row factor [R, 1] of the update (the MLP scaling ``alpha * r + 1``); ``None``: 1.

    Returns:
        [R, out], in the rows' order.
    """
    if slicing == "input":
        route = GEMM_POLICY.route(layout, weight.shape[1], x, weight, bias)
        if route == "dense":  # exactly timm's call, and autograd's own backward
            return F.linear(x, weight, bias)
        if route == "no_grad":  # inference: no autograd node to build
            return _input_linear(x, weight, bias, layout, GEMM_POLICY.by_width_block(layout, weight.shape[1]))
        return _NestedInputLinear.apply(layout, x, weight, bias)
    route = GEMM_POLICY.route(layout, weight.shape[0], x, weight, bias, residual, scale, scaled=scale is not None)
    if route == "dense":  # timm's ops and residual add, and autograd's own backward
        return _dense_output_linear(x, weight, bias, residual)
    if route == "no_grad":
        by_block = GEMM_POLICY.by_width_block(layout, weight.shape[0])
        return _output_linear(x, weight, bias, layout, residual, scale, by_block)[0]
    return _NestedOutputLinear.apply(layout, x, weight, bias, residual, scale)


def nested_input_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: GroupLayout
) -> torch.Tensor:
    """``grouped_linear(x, weight, bias, layout, "input")``: [R, in] -> [R, out]."""
    return grouped_linear(x, weight, bias, layout, "input")


def nested_output_linear(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: GroupLayout,
    residual: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grouped_linear(h, weight, bias, layout, "output", residual, scale)``: [R, in] -> [R, out]."""
    return grouped_linear(h, weight, bias, layout, "output", residual, scale)
