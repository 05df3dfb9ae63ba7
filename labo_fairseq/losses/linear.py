"""Chunked output-layer loss ("fused linear loss"): ``criterion(log_softmax(hidden @ weight.T + bias), target)``
without the (N, V) logits, in pure torch.

Value and convention are those of :mod:`labo_fairseq.losses` (sums over tokens whose target is not
``ignore_index``, in nats; ``nll_loss`` the plain ``-log p_y``): each chunk of tokens calls the same
pure loss on its own ``(chunk, V)`` log-probabilities, so every formula (LABO's P*, alpha, the
KL(P*||U) term and its statistics; LS's q; CP's entropy; the focal weights and their detach flags)
and every range check keeps one home there. Rows are independent in those losses, so the chunk
sums equal the full-batch value up to float summation order.

Design: the gradient w.r.t. the chunk's logits ``dz`` is taken during forward (as Liger-Kernel
does): autograd of the pure loss w.r.t. the chunk's log-probs, then log_softmax's backward by hand
(``dz = g - p * sum_j g_j``), folded at once into ``grad_hidden[chunk] = dz @ W``,
``grad_weight += dz.T @ h`` and ``grad_bias += sum dz``. The loss is a scalar sum, so backward
only multiplies these by the incoming ``grad_output``: the logits matmul runs once, not twice as
in the recompute design (forward for the value, backward again for ``dz``), i.e. 3 GEMMs of
N x V x d instead of 4. The price is holding the fp32 ``grad_weight`` (V x d: 1 GiB at V = 256k,
d = 1024) and ``grad_hidden`` (N x d) from forward to backward, where recompute would hold them
only during backward. The gradient of ``nll_loss`` is not precomputed (it is usually only logged):
a backward that reaches ``nll_loss`` recomputes the chunks' logits for ``p - onehot(y)``
(differentiable under every criterion, where the pure LABO and CP losses mark theirs non-differentiable).
A no-grad call (validation) does the value sweep only.

Memory: a few (chunk x V) buffers of the working dtype at a time (logits, log-probs, the pure loss's
buffer, its gradient), freed before the next chunk. Precision: the logits GEMM and the one for
``grad_hidden`` run in the inputs' dtype with fp32 accumulation, as the model's own output layer and
its unfused backward do (no V x d fp32 copy of a bf16 weight, the largest buffer there would be);
everything after the logits (log_softmax, P*, the loss, ``dz``) is at least fp32, chunk by chunk,
and ``grad_weight`` accumulates over the chunks in fp32 (see :func:`_add_grad_weight` for the
GEMM's dtype). Outputs and gradients come back in the inputs' dtypes.
Backward reuses the forward's buffers in place, so it can run once (like the pure losses).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor

from labo_fairseq.losses.token import (
    _take_buffer,
    anti_focal_loss,
    confidence_penalty_loss,
    focal_loss,
    label_smoothing_loss,
    labo_terms,
)

__all__ = ["CRITERIA", "default_chunk_tokens", "linear_loss", "token_loss_fn"]

# criterion -> (pure loss, parameters fixed by the name); the other parameters, their defaults and
# which are required come from the pure loss's signature.
CRITERIA: dict[str, tuple[Callable, dict]] = {
    "ce": (label_smoothing_loss, {"epsilon": 0.0}),
    "ls": (label_smoothing_loss, {}),
    "labo": (labo_terms, {}),
    "cp": (confidence_penalty_loss, {}),
    "fl": (focal_loss, {}),
    "afl": (anti_focal_loss, {}),
}
_NOT_PARAMS = {"lprobs", "target", "ignore_index", "reduce"}

# One (chunk x V) buffer of the working dtype is kept near this size (the chunk loop holds ~3-4):
# large enough that the three GEMMs per chunk (M = chunk) stay compute-bound rather than re-reading
# the V x d weight and gradient per few tokens, small enough to be noise next to the (N x V)
# logits it replaces (4096 x 256k fp32 = 4 GiB).
CHUNK_BYTES = 128 * 2**20


def default_chunk_tokens(n_tokens: int, vocab: int, element_size: int = 4) -> int:
    """Tokens per chunk so that one ``(chunk, V)`` buffer is about :data:`CHUNK_BYTES` (128 MiB):
    rounded down to a multiple of 8 (GEMM tiles) when >= 8, at least 1, at most ``n_tokens``.
    E.g. fp32: V = 10k -> 3352, 40k -> 832, 128k -> 256, 256k -> 128 tokens."""
    raw = CHUNK_BYTES // (element_size * max(vocab, 1))
    chunk = raw - raw % 8 if raw >= 8 else max(raw, 1)
    return max(1, min(chunk, n_tokens))


def _runner(fn: Callable, kwargs: dict) -> Callable:
    """``run(lprobs, target, ignore_index) -> (loss, nll, stats or None)``, sums over tokens."""
    def run(lprobs, target, ignore_index):
        out = fn(lprobs, target, ignore_index=ignore_index, reduce=True, **kwargs)
        return out if len(out) == 3 else (*out, None)
    return run


def token_loss_fn(criterion: str, params: dict) -> Callable:
    """``run(lprobs, target, ignore_index) -> (loss, nll, stats or None)``: the pure loss for
    ``criterion``; ``ValueError`` for an unknown name, parameter or value."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    fn, fixed = CRITERIA[criterion]
    sig = inspect.signature(fn).parameters
    names = [n for n in sig if n not in _NOT_PARAMS and n not in fixed]
    for name in params:
        if name not in names:
            raise ValueError(f"criterion {criterion!r} has no parameter {name!r} (it takes: {', '.join(names) or 'none'})")
    for name in names:
        if sig[name].default is inspect.Parameter.empty and name not in params:
            raise ValueError(f"criterion {criterion!r} needs the parameter {name!r}")
    run = _runner(fn, {**fixed, **params})
    # The ranges live in the pure loss (its check_range calls): run it once on a 1-token, 2-class
    # dummy so that a bad value fails now, before any (V, d) buffer exists, and also for N = 0.
    with torch.no_grad():
        run(torch.log_softmax(torch.zeros(1, 2), -1), torch.zeros(1, dtype=torch.long), None)
    return run


_CE = _runner(label_smoothing_loss, {"epsilon": 0.0})  # the nll's gradient p - onehot(y)


def _chunk_terms(run, h, w, b, target, ignore_index, want_grad):
    """``(loss, nll, stats, dz)`` of one chunk, ``dz = d loss / d logits`` (None without ``want_grad``)."""
    with torch.no_grad():
        # the GEMM in the inputs' dtype (fp32 accumulation inside, as the model's own output layer);
        # the loss from here on in the working dtype, at least fp32
        z = (h @ w.t()).to(torch.promote_types(h.dtype, torch.float32))
        if b is not None:
            z += b
        lp = torch.log_softmax(z, -1)
        del z
    if not want_grad:
        return (*run(lp, target, ignore_index), None)
    lp.requires_grad_()
    with torch.enable_grad():
        loss, nll, stats = run(lp, target, ignore_index)
        (g,) = torch.autograd.grad(loss, lp)
    if not g.is_contiguous():  # an expanded (stride-0) gradient must not be written in place
        g = g.contiguous()
    # log_softmax's backward, in place in the two buffers there are: dz = g - p * sum_j g_j
    p = lp.detach().exp_()
    dz = g.sub_(p.mul_(g.sum(-1, keepdim=True)))
    return loss.detach(), nll.detach(), stats, dz


# From this many tokens per chunk, bf16 inputs take grad_weight's GEMM in bf16 (see _add_grad_weight).
HALF_GEMM_MIN_TOKENS = 512


def _add_grad_weight(gw, dz, dz_in, h):
    """``gw += dz.T @ h`` into the fp32 accumulator; each chunk's product passes once over the whole
    (V, d) ``gw``. bf16 inputs in chunks of at least :data:`HALF_GEMM_MIN_TOKENS` tokens: the GEMM
    in bf16 (fp32 accumulation inside, rounded once per chunk as the unfused backward rounds its one
    product), added to ``gw`` in blocks of rows (a temporary near :data:`CHUNK_BYTES`). Otherwise one
    fp32 GEMM adding in place: for small chunks the mixed-dtype addition's extra pass costs more than
    the faster GEMM saves (a bf16 step of fused LABO on a CPU with bf16 instructions: 14% faster at
    832 tokens per chunk, about even at 256, 20% slower at 128), and fp16 would flush the small
    entries of ``dz`` (rare tokens' probabilities, before any loss scale) to zero."""
    if dz_in.dtype != torch.bfloat16 or dz.size(0) < HALF_GEMM_MIN_TOKENS:
        gw.addmm_(dz.t(), h.to(dz.dtype))
        return
    rows = max(1, CHUNK_BYTES // (dz_in.element_size() * h.size(1)))
    for r in range(0, gw.size(0), rows):
        gw[r:r + rows] += dz_in[:, r:r + rows].t() @ h


def _sweep(hidden, w, b, target, run, chunk, ignore_index, grads, scale=None):
    """Sum loss, nll and statistics over chunks of ``chunk`` tokens (float64 accumulators), adding
    each chunk's ``scale * dz`` products into ``grads = (grad_hidden, grad_weight, grad_bias)``
    (working-dtype buffers, or None where no gradient is wanted)."""
    gh, gw, gb = grads
    want = any(g is not None for g in grads)
    loss = hidden.new_zeros((), dtype=torch.float64)
    nll = loss.clone()
    stats: dict[str, Tensor] = {}
    for s in range(0, hidden.size(0), chunk):
        h = hidden[s:s + chunk].to(w.dtype)
        with torch.autocast(hidden.device.type, enabled=False):  # an AMP region must not downcast the GEMMs
            l_c, nll_c, st, dz = _chunk_terms(run, h, w, b, target[s:s + chunk], ignore_index, want)
        loss += l_c
        nll += nll_c
        for k, v in (st or {}).items():
            stats[k] = stats.get(k, 0.0) + v.double()
        if dz is None:
            continue
        if scale is not None:
            dz.mul_(scale.to(dz.dtype))
        with torch.autocast(hidden.device.type, enabled=False):
            dz_in = dz.to(w.dtype)  # dz in the inputs' dtype, as the unfused backward's grad of the logits
            if gh is not None:  # (chunk, d)
                gh[s:s + chunk] += dz_in @ w
            if gw is not None:
                _add_grad_weight(gw, dz, dz_in, h)
            del dz_in
        if gb is not None:
            gb.add_(dz.sum(0))
        del dz
    return loss, nll, stats


def _work_dtype(hidden, weight):
    """At least float32: bf16/fp16 inputs are computed in float32, float64 ones in float64."""
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def _work_params(hidden, weight, bias):
    """The weight in the GEMMs' dtype, the inputs' (no copy: a V x d fp32 copy of a half-precision
    weight would be the largest buffer of all), the bias in the working dtype."""
    gemm = torch.promote_types(hidden.dtype, weight.dtype)
    return weight.to(gemm), None if bias is None else bias.to(_work_dtype(hidden, weight))


def _grad_buffers(hidden, w, b, needs):
    """Gradient accumulators in the working dtype (at least fp32)."""
    work = torch.promote_types(w.dtype, torch.float32)
    shapes = (hidden.shape, w.shape, None if b is None else b.shape)
    return [torch.zeros(shape, dtype=work, device=w.device) if need and shape is not None else None
            for need, shape in zip(needs, shapes)]


class _LinearLossFunction(torch.autograd.Function):
    """``(loss, nll)`` sums; forward accumulates ``d loss / d (hidden, weight, bias)``, backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, run, chunk, ignore_index, stats_out):
        w, b = _work_params(hidden, weight, bias)
        grads = _grad_buffers(hidden, w, b, ctx.needs_input_grad[:3])
        loss, nll, stats = _sweep(hidden, w, b, target, run, chunk, ignore_index, grads)
        stats_out.update(stats)
        ctx.save_for_backward(hidden, weight, bias, target)
        ctx.grads, ctx.chunk, ctx.ignore_index = grads, chunk, ignore_index
        ctx.set_materialize_grads(False)  # an unused nll arrives as None: no recompute sweep
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
        return loss.to(dtype), nll.to(dtype)

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        hidden, weight, bias, target = ctx.saved_tensors
        grads = _take_buffer(ctx, "grads")
        for g in grads:
            if g is not None and grad_loss is not None:
                g.mul_(grad_loss.to(g.dtype))
            elif g is not None:
                g.zero_()
        if grad_nll is not None:
            w, b = _work_params(hidden, weight, bias)
            _sweep(hidden, w, b, target, _CE, ctx.chunk, ctx.ignore_index, grads, scale=grad_nll)
        out = [None if g is None else g.to(src.dtype) for g, src in zip(grads, (hidden, weight, bias))]
        return (*out, None, None, None, None, None)


def _check_shapes(hidden, weight, bias, target):
    if hidden.dim() < 1 or weight.dim() != 2 or weight.size(1) != hidden.size(-1):
        raise ValueError(f"weight must be (V, d) with d = hidden's last dimension; got weight {tuple(weight.shape)}, "
                         f"hidden {tuple(hidden.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.size(0),):
        raise ValueError(f"bias must have shape ({weight.size(0)},) to match weight {tuple(weight.shape)}, "
                         f"got {tuple(bias.shape)}")
    h2 = hidden.reshape(-1, hidden.size(-1))
    if target.numel() != h2.size(0):
        raise ValueError(f"target has {target.numel()} elements, hidden {tuple(hidden.shape)} has {h2.size(0)} tokens")
    return h2, target.reshape(-1)


def linear_loss(hidden: Tensor, weight: Tensor, target: Tensor, criterion: str, *, bias: Tensor | None = None,
                chunk_tokens: int | None = None, ignore_index: int | None = None, return_stats: bool = False,
                **params):
    """``criterion`` on ``log_softmax(hidden @ weight.T + bias)``, summed over non-ignored tokens, in
    chunks of ``chunk_tokens`` tokens: returns ``(loss, nll_loss)`` (plus ``stats`` with ``return_stats``).

    ``hidden`` (..., d), ``weight`` (V, d), ``bias`` (V,) or None, ``target`` (...) with hidden's
    leading shape. ``criterion``: ``ce``; ``ls`` (epsilon; fairseq's convention); ``labo`` (tau,
    rho=0.5, alpha=None: adaptive; no warm-up here: the caller picks ls or labo); ``cp`` (beta);
    ``fl`` (gamma, detach_weight=False); ``afl`` (gamma, alpha=1.0, detach_weight=True); parameters
    and ranges as in :mod:`labo_fairseq.losses`. Values in nats, in the inputs' dtype; gradients
    flow to hidden, weight and bias. ``chunk_tokens=None``: :func:`default_chunk_tokens`.
    ``stats`` (sums, no gradient): labo ``{"alpha", "target_entropy", "ntokens"}`` as
    :func:`~labo_fairseq.losses.labo_terms` gives them; the others ``{"ntokens"}``.
    """
    run = token_loss_fn(criterion, params)
    hidden2, target = _check_shapes(hidden, weight, bias, target)
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    n = hidden2.size(0)
    chunk = default_chunk_tokens(n, weight.size(0)) if chunk_tokens is None else int(chunk_tokens)
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    stats: dict[str, Tensor] = {}
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        loss, nll = _LinearLossFunction.apply(hidden2, weight, bias, target, run, chunk, ignore_index, stats)
    else:
        w, b = _work_params(hidden2, weight, bias)
        loss, nll, stats = _sweep(hidden2, w, b, target, run, chunk, ignore_index, (None, None, None))
        loss, nll = loss.to(dtype), nll.to(dtype)
    if not return_stats:
        return loss, nll
    work = _work_dtype(hidden, weight)
    if "ntokens" not in stats:
        keep = target.numel() if ignore_index is None else target.ne(ignore_index).sum()
        stats["ntokens"] = torch.as_tensor(keep, dtype=torch.float64, device=target.device)
    return loss, nll, {k: v.to(work) for k, v in stats.items()}
