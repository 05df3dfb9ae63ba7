"""Chunked output-layer loss ("fused linear loss"): ``criterion(log_softmax(hidden @ weight.T + bias), target)``
without the (N, V) logits, in pure torch.

Value and convention are those of :mod:`labo_fairseq.losses` (sums over tokens whose target is not
``ignore_index``, in nats; ``nll_loss`` the plain ``-log p_y``): each chunk of tokens calls the same
pure loss on its own ``(chunk, V)`` log-probabilities, so every formula (LABO's P*, alpha, the
KL(P*||U) term and its statistics; LS's q; CP's entropy; the focal weights and their detach flags)
and every range check keeps one home there. Rows are independent in those losses, so the chunk
sums equal the full-batch value up to float summation order.

Design: tokens whose target is ``ignore_index`` are dropped before the first GEMM. The gradient
w.r.t. the chunk's logits ``dz`` is taken during forward (as Liger-Kernel does): ``p - q`` written
in one go for CE, LS and LABO, whose target q is a constant summing to 1 (:data:`LOGIT_FORMS`);
for CP, FL and AFL autograd of the pure loss w.r.t. the chunk's log-probs, then log_softmax's
backward by hand (``dz = g - p * sum_j g_j``). It goes into ``grad_hidden = dz @ W``,
``grad_weight += dz.T @ h`` and ``grad_bias += sum dz`` at once, so backward only scales them by
``grad_output``: 3 GEMMs of N x V x d, not the recompute design's 4, for holding the fp32
``grad_weight`` (1 GiB at V = 256k, d = 1024) and ``grad_hidden`` from forward to backward.
``nll_loss``'s gradient (usually only logged) is not precomputed: a backward that reaches it
recomputes the chunks for ``p - onehot(y)``. A no-grad call (validation) does the value sweep only.

Memory: two (chunk x V) working-dtype buffers (logits, then log-probs in place on the CPU, then
``dz`` for CE/LS/LABO; the loss's scratch; CUDA's log-probs and CP/FL/AFL's autograd take their own),
for a bf16 weight the chunks' ``dz`` waiting in bf16 (:data:`PENDING_BYTES`); reused by the next
chunk (on the CPU also by the next call: :class:`~labo_fairseq.losses.workspace.Workspace`). Precision: the
GEMMs run in the inputs' dtype with fp32 accumulation, as the model's own output layer and its
unfused backward do (no V x d fp32 copy of a bf16 weight); everything after the logits is at least
fp32, and ``grad_weight`` accumulates in fp32 (:meth:`_GradWeight.add_`). Outputs and gradients
come back in the inputs' dtypes. Backward reuses the forward's buffers, so it can run once.
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
    label_smoothing_logit_terms,
    label_smoothing_loss,
    labo_logit_terms,
    labo_terms,
)
from labo_fairseq.losses.workspace import WORKSPACE, alias

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
# The losses whose target is a distribution q held constant (summing to 1): their gradient w.r.t.
# the logits is p - q, which the pure loss's module writes in one go (fewer passes over the chunk
# than autograd through the pure loss and log_softmax's backward); the others take that route.
LOGIT_FORMS: dict[str, Callable] = {
    "ce": label_smoothing_logit_terms,
    "ls": label_smoothing_logit_terms,
    "labo": labo_logit_terms,
}
_NOT_PARAMS = {"lprobs", "target", "ignore_index", "reduce"}

# One (chunk x V) buffer of the working dtype is kept near this size (the chunk loop holds two):
# large enough that the GEMMs per chunk (M = chunk) stay compute-bound rather than re-reading
# the V x d weight and gradient per few tokens, small enough to be noise next to the (N x V)
# logits it replaces (4096 x 256k fp32 = 4 GiB).
CHUNK_BYTES = 128 * 2**20
# bf16 weights: the chunk's two fp32 buffers take half of CHUNK_BYTES each, and the chunks' dz in
# bf16 wait in a buffer of this size, so that grad_hidden's and grad_weight's GEMMs run in bf16 over
# many chunks at once (K = 512 tokens at V = 256k, where a chunk is 64): measured on a CPU with bf16
# instructions, grad_weight's GEMM per token (V = 256k, d = 1,024) took 6.4 ms in fp32 at K = 128,
# 5.2 ms in bf16 at K = 384 and 4.2 ms at K = 512, and grad_hidden's 4.4 ms at M = 64 and 2.9 ms at
# M = 512. The same memory as three fp32 buffers of CHUNK_BYTES. (224 MiB took 1.03x unfused LS's
# time at 256k where 256 MiB took 0.88x: docs/performance.md.)
PENDING_BYTES = 2 * CHUNK_BYTES


def default_chunk_tokens(n_tokens: int, vocab: int, bf16: bool = False) -> int:
    """Tokens per chunk so that one fp32 ``(chunk, V)`` buffer is at most about :data:`CHUNK_BYTES`
    (128 MiB; half of it for a ``bf16`` weight, see :data:`PENDING_BYTES`), the ``n_tokens`` shared
    evenly between as few chunks as that allows (no short last chunk running its GEMMs at a poor
    shape); a multiple of 8 (GEMM tiles) when >= 8, within [1, n_tokens]. E.g. fp32, 4,096 tokens:
    V = 10k -> 2 x 2048, 40k -> 5 x 824, 256k -> 32 x 128; bf16 at 256k: 64 x 64."""
    raw = (CHUNK_BYTES // (2 if bf16 else 1)) // (4 * max(vocab, 1))
    most = raw - raw % 8 if raw >= 8 else max(raw, 1)
    if n_tokens <= most:
        return max(1, n_tokens)
    even = -(-n_tokens // -(-n_tokens // most))  # ceil(n / number of chunks)
    return min(most, even + (-even) % 8 if even >= 8 else even)


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


def _logit_runner(criterion: str, params: dict) -> Callable | None:
    """``run(lprobs, target) -> (loss, nll, stats, dz)`` per token, all rows kept (``LOGIT_FORMS``), or None."""
    form = LOGIT_FORMS.get(criterion)
    if form is None:
        return None
    kwargs = {**CRITERIA[criterion][1], **params}
    return lambda lprobs, target, scratch: form(lprobs, target, scratch=scratch, **kwargs)


_CE = (_runner(label_smoothing_loss, {"epsilon": 0.0}), None)  # the nll's gradient p - onehot(y)


def _chunk_terms(fns, h, w, b, target, want_grad, z, spare):
    """``(loss, nll, stats, dz, free)`` of one chunk of kept tokens, ``dz = d loss / d logits`` (None
    without ``want_grad``), ``free`` a (chunk, V) working-dtype buffer no longer used; ``fns = (run,
    logit form or None)``; ``z`` and ``spare`` the chunk's two (chunk, V) working-dtype buffers.
    ``dz`` and ``free`` live until the next chunk."""
    run, logit_form = fns
    with torch.no_grad():
        # the GEMM in the inputs' dtype (fp32 accumulation inside, as the model's own output layer),
        # a half-precision product in spare's memory (free until the loss); the loss from here on
        # in the working dtype, at least fp32
        if h.dtype != z.dtype:
            z.copy_(torch.mm(h, w.t(), out=alias(spare, h.dtype)))
        else:
            torch.mm(h, w.t(), out=z)
        if b is not None:
            z += b
        # the log-probs over the logits: in place on the CPU, whose kernel reads a row before writing
        # it; CUDA's caching allocator gives a buffer at no cost, and its kernels make no such promise
        lp = torch.log_softmax(z, -1, out=z) if z.device.type == "cpu" else torch.log_softmax(z, -1)
        if want_grad and logit_form is not None:
            loss, nll, stats, dz = logit_form(lp, target, (spare,))
            return loss.sum(), nll.sum(), {k: v.sum() for k, v in stats.items()}, dz, spare
    if not want_grad:
        return (*run(lp, target, None), None, None)
    lp.requires_grad_()
    with torch.enable_grad():
        loss, nll, stats = run(lp, target, None)
        (g,) = torch.autograd.grad(loss, lp)
    if not g.is_contiguous():  # an expanded (stride-0) gradient must not be written in place
        g = g.contiguous()
    # log_softmax's backward, in place in the two buffers there are: dz = g - p * sum_j g_j
    p = lp.detach().exp_()
    dz = g.sub_(p.mul_(g.sum(-1, keepdim=True)))
    return loss.detach(), nll.detach(), stats, dz, spare


class _GradWeight:
    """``grad_weight`` (V, d) accumulated over the chunks in the working dtype (at least fp32), in
    blocks of rows. A half-precision weight gets its gradient back block by block, each fp32 block
    freed as its copy is made, so that the whole fp32 accumulator and the whole half-precision result
    never coexist (V = 256k, d = 1,024: 1 GiB at the end, not 1.5). That conversion's peak is the
    accumulator plus one block's copy, so its blocks are half of :data:`CHUNK_BYTES` (a 32 MiB copy;
    measured at 256k: 64 MiB over the sweep's peak with 128 MiB blocks), and not smaller: glibc's
    malloc serves requests up to 32 MiB from its heap, which keeps freed blocks resident (16 MiB
    blocks left 1 GiB resident after the conversion). Otherwise blocks of :data:`CHUNK_BYTES` of the
    one accumulator."""

    def __init__(self, w: Tensor, out_dtype: torch.dtype):
        work = self.dtype = torch.promote_types(w.dtype, torch.float32)
        whole = out_dtype == work  # the accumulator is the result
        rows = max(1, CHUNK_BYTES // (1 if whole else 2) // (work.itemsize * w.size(1)))
        self.starts = list(range(0, w.size(0), rows))
        if whole:
            self.whole = torch.zeros(w.shape, dtype=work, device=w.device)
            self.blocks = list(self.whole.split(rows))
        else:
            self.whole = None
            self.blocks = [torch.zeros(min(rows, w.size(0) - r), w.size(1), dtype=work, device=w.device)
                           for r in self.starts]

    def add_(self, dz: Tensor, h: Tensor, tmp: Tensor | None = None) -> None:
        """``+= dz.T @ h``, one pass over every block. ``dz`` in the working dtype: a GEMM adding in
        place (fp16 inputs too, whose dtype would flush the small entries of ``dz``, rare tokens'
        probabilities before any loss scale, to zero). ``dz`` in bf16 (the waiting rows of a bf16
        weight, :data:`PENDING_BYTES`): the GEMM in bf16 (fp32 accumulation inside, rounded once per
        flush as the unfused backward rounds its one product) into a small product buffer, added to
        the block; the flushes' K tokens make the bf16 GEMM worth the addition's extra pass. ``tmp``:
        a (rows, d) bf16 buffer for the products (:func:`_product_rows` rows)."""
        if dz.dtype != torch.bfloat16:
            h = h.to(dz.dtype)
            for r, block in zip(self.starts, self.blocks):
                block.addmm_(dz[:, r:r + block.size(0)].t(), h)
            return
        rows = tmp.size(0)
        for r, block in zip(self.starts, self.blocks):
            for i in range(0, block.size(0), rows):
                part = block[i:i + rows]
                block_tmp = tmp[:part.size(0)]
                torch.mm(dz[:, r + i:r + i + part.size(0)].t(), h, out=block_tmp)
                part += block_tmp

    def mul_(self, scale: Tensor) -> None:
        for block in self.blocks:
            block.mul_(scale)

    def zero_(self) -> None:
        for block in self.blocks:
            block.zero_()

    def to(self, dtype: torch.dtype) -> Tensor:
        """The gradient in ``dtype``; the accumulator is used up."""
        if self.whole is not None:
            return self.whole.to(dtype)
        parts = []
        while self.blocks:
            parts.append(self.blocks.pop(0).to(dtype))
        return torch.cat(parts)


def _product_rows(vocab: int, dim: int) -> int:
    """Rows of grad_weight's bf16 product buffer at a flush: 8 MiB (row blocks of that size run the
    GEMM as fast as whole 128 MiB blocks)."""
    return min(vocab, max(1, CHUNK_BYTES // 16 // (2 * dim)))


def _pending_tokens(n: int, chunk: int, vocab: int) -> int:
    """Rows of the bf16 ``dz`` that wait for grad_hidden's and grad_weight's GEMMs: whole chunks
    filling at most :data:`PENDING_BYTES` (at least one), no more than the ``n`` tokens."""
    return min(max(n, 1), chunk * max(1, PENDING_BYTES // (2 * chunk * max(vocab, 1))))


def _sweep(hidden, w, b, target, fns, chunk, grads, scale=None):
    """Sum loss, nll and statistics over chunks of ``chunk`` kept tokens (float64 accumulators),
    adding each chunk's ``scale * dz`` products into ``grads = (grad_hidden, grad_weight, grad_bias)``
    (working-dtype buffers, or None where no gradient is wanted). A bf16 weight's chunks leave
    their ``dz`` in bf16 rows that the two GEMMs take many chunks at a time (:data:`PENDING_BYTES`)."""
    gh, gw, gb = grads
    n, device = hidden.size(0), hidden.device
    want = any(g is not None for g in grads)
    work = torch.promote_types(w.dtype, torch.float32)
    gemms = gh is not None or gw is not None
    k = _pending_tokens(n, chunk, w.size(0)) if gemms and w.dtype == torch.bfloat16 else 0
    z, spare, pending, tmp = WORKSPACE.views(device, [((min(chunk, max(n, 1)), w.size(0)), work)] * 2 + [
        ((k, w.size(0)), torch.bfloat16), ((_product_rows(w.size(0), w.size(1)) if k else 0, w.size(1)), torch.bfloat16)])
    start = 0  # the first token of the waiting rows

    def flush(end):
        if gh is not None:
            gh[start:end] += pending[:end - start] @ w
        if gw is not None:
            gw.add_(pending[:end - start], hidden[start:end].to(w.dtype), tmp)

    loss = hidden.new_zeros((), dtype=torch.float64)
    nll = loss.clone()
    stats: dict[str, Tensor] = {}
    for s in range(0, n, chunk):
        h = hidden[s:s + chunk].to(w.dtype)
        with torch.autocast(device.type, enabled=False):  # an AMP region must not downcast the GEMMs
            l_c, nll_c, st, dz, free = _chunk_terms(fns, h, w, b, target[s:s + chunk], want,
                                                    z[:h.size(0)], spare[:h.size(0)])
        loss += l_c
        nll += nll_c
        for key, v in (st or {}).items():
            stats[key] = stats.get(key, 0.0) + v.double()
        if dz is None:
            continue
        if scale is not None:
            dz.mul_(scale.to(dz.dtype))
        if gb is not None:
            gb.add_(dz.sum(0))
        with torch.autocast(device.type, enabled=False):
            if k:
                end = s + h.size(0)
                pending[s - start:end - start].copy_(dz)
                if end == n or end - start + min(chunk, n - end) > k:  # the next chunk would not fit
                    flush(end)
                    start = end
                continue
            # dz in the inputs' dtype, as the unfused backward's grad of the logits
            dz_in = dz if dz.dtype == w.dtype else alias(free, w.dtype).copy_(dz)
            if gh is not None:  # (chunk, d)
                gh[s:s + chunk] += dz_in @ w
            if gw is not None:
                gw.add_(dz, h)
            del dz_in
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


def _grad_buffers(hidden, weight, w, b, needs):
    """Gradient accumulators in the working dtype (at least fp32): hidden's, weight's
    (:class:`_GradWeight`), bias's; None where not needed."""
    work = torch.promote_types(w.dtype, torch.float32)
    gh = torch.zeros(hidden.shape, dtype=work, device=w.device) if needs[0] else None
    gw = _GradWeight(w, weight.dtype) if needs[1] else None
    gb = torch.zeros(b.shape, dtype=work, device=w.device) if needs[2] and b is not None else None
    return [gh, gw, gb]


class _LinearLossFunction(torch.autograd.Function):
    """``(loss, nll)`` sums over the kept tokens ``hidden`` (n, d); forward accumulates
    ``d loss / d (hidden, weight, bias)``, backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, fns, chunk, stats_out):
        w, b = _work_params(hidden, weight, bias)
        grads = _grad_buffers(hidden, weight, w, b, ctx.needs_input_grad[:3])
        loss, nll, stats = _sweep(hidden, w, b, target, fns, chunk, grads)
        stats_out.update(stats)
        ctx.save_for_backward(hidden, weight, bias, target)
        ctx.grads, ctx.chunk = grads, chunk
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
            _sweep(hidden, w, b, target, _CE, ctx.chunk, grads, scale=grad_nll)
        out = [None if g is None else g.to(src.dtype) for g, src in zip(grads, (hidden, weight, bias))]
        return (*out, None, None, None, None)


def _kept_tokens(hidden, target, ignore_index):
    """``(hidden, target)`` of the tokens whose target is not ``ignore_index`` (the inputs themselves
    where every token is kept): ignored tokens cost no GEMM and no pass over V."""
    if ignore_index is None:
        return hidden, target
    rows = target.ne(ignore_index).nonzero().squeeze(1)
    if rows.numel() == target.numel():
        return hidden, target
    return hidden.index_select(0, rows), target.index_select(0, rows)


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
    fns = (token_loss_fn(criterion, params), _logit_runner(criterion, params))
    hidden2, target = _check_shapes(hidden, weight, bias, target)
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    kept_hidden, kept_target = _kept_tokens(hidden2, target, ignore_index)
    n = kept_hidden.size(0)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    # dz waits in bf16 rows (PENDING_BYTES) where a GEMM gradient is wanted, as _sweep decides
    bf16 = dtype == torch.bfloat16 and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    chunk = default_chunk_tokens(n, weight.size(0), bf16) if chunk_tokens is None else int(chunk_tokens)
    stats: dict[str, Tensor] = {}
    if grad:
        loss, nll = _LinearLossFunction.apply(kept_hidden, weight, bias, kept_target, fns, chunk, stats)
    else:
        w, b = _work_params(kept_hidden, weight, bias)
        loss, nll, stats = _sweep(kept_hidden, w, b, kept_target, fns, chunk, (None, None, None))
        loss, nll = loss.to(dtype), nll.to(dtype)
    if not return_stats:
        return loss, nll
    work = _work_dtype(hidden, weight)
    stats.setdefault("ntokens", torch.tensor(float(n), dtype=torch.float64, device=target.device))
    return loss, nll, {k: v.to(work) for k, v in stats.items()}
