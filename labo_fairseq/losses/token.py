"""Pure loss functions: tensors in, ``(loss, nll_loss)`` out. No fairseq import.

Common convention (fairseq's): ``lprobs`` is ``(N, V)`` log-probabilities, ``target`` is ``(N,)``;
positions whose target equals ``ignore_index`` contribute exactly 0 to value and gradient.
``reduce=True`` sums over tokens and returns scalars; ``reduce=False``
returns per-token ``(N,)`` tensors. ``nll_loss`` is always the plain ``-log p_y``, so perplexity
means the same thing under every criterion. Internals run in at least float32 (fp16/bf16 inputs are
promoted); the results have the input dtype.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from labo_fairseq.losses.hparams import HP, check_range

__all__ = [
    "labo_loss",
    "label_smoothing_loss",
    "confidence_penalty_loss",
    "focal_loss",
    "anti_focal_loss",
    "distillation_loss",
    "distillation_terms",
    "check_range",
]


def _pad_mask(target: Tensor, ignore_index: Optional[int]) -> Optional[Tensor]:
    return None if ignore_index is None else target.eq(ignore_index)


def _finish(loss: Tensor, nll: Tensor, pad: Optional[Tensor], reduce: bool, dtype) -> Tuple[Tensor, Tensor]:
    """Zero padded positions (with ``where``, so NaN/inf there cannot leak) and optionally sum."""
    if pad is not None:
        zero = loss.new_zeros(())
        loss = torch.where(pad, zero, loss)
        nll = torch.where(pad, zero, nll)
    if reduce:
        loss, nll = loss.sum(), nll.sum()
    return loss.to(dtype), nll.to(dtype)


def _work(lprobs: Tensor) -> Tensor:
    """The working precision: at least float32."""
    return lprobs.float() if lprobs.element_size() < 4 else lprobs


def _rowdot_checked(a: Tensor, b: Tensor) -> Tuple[Tensor, bool]:
    """``((a * b).sum(-1), no_inf)`` for 2-D ``a >= 0`` without an (N, V) temporary.

    Where ``b`` is -inf and ``a`` is 0 (an impossible class) the term counts as 0, not NaN; that
    slower path runs only when a NaN shows up in the (N,) result, and ``no_inf`` is then False.
    """
    out = torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)
    if torch.isnan(out).any():
        return torch.where(a > 0, a * b, 0.0).sum(-1), False
    return out, True


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    return _rowdot_checked(a, b)[0]


def _gold(x: Tensor, target: Tensor) -> Tensor:
    """``x[i, target[i]]``; targets outside ``[0, V)`` (e.g. a pad index of -100) read column 0."""
    safe = target.clamp(0, x.size(-1) - 1)
    return x.gather(-1, safe.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------------------- LABO


def _take_buffer(ctx, name: str) -> Tensor:
    """The (N, V) buffer that forward kept for backward, handed over once to become the gradient."""
    buf = getattr(ctx, name, None)
    if buf is None:
        raise RuntimeError("this loss's backward reuses its buffer in place and can run only once "
                           "(retain_graph=True with a second backward is not supported)")
    setattr(ctx, name, None)
    return buf


def _labo_forward(x: Tensor, target: Tensor, tau: float, rho: float, alpha_fixed: Optional[float],
                  p: Optional[Tensor] = None, buf: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
    """Eq. 14 per token from log-probs ``x`` (at least fp32): ``(loss, nll, alpha, target_entropy, e,
    z)`` with ``P* = e / z``, ``e`` written into ``buf`` (x's shape and dtype; allocated if None).
    ``p = exp(x)`` where the caller has it already (for the entropy in Eq. 16)."""
    n, vocab = x.shape
    log_v = math.log(vocab)
    buf = torch.empty_like(x) if buf is None else buf  # the one (N, V) scratch buffer, reused
    if alpha_fixed is None:
        # alpha = (log V - rho H(p)) / log V  (Eq. 16)
        entropy = -_rowdot(torch.exp(x, out=buf) if p is None else p, x)
        alpha = ((log_v - rho * entropy) / log_v).clamp_(0.0, 1.0)
    else:
        alpha = x.new_full((n,), float(alpha_fixed))
    # P* = softmax(x / tau) = e / Z with e = exp(x/tau - m). max_j x_j >= -log V, so m = 0
    # cannot underflow a whole row unless log V / tau is large; then shift by the row max.
    m = x.amax(-1) / tau if log_v / tau > 60.0 else x.new_zeros(n)
    e = torch.mul(x, 1.0 / tau, out=buf)
    if log_v / tau > 60.0:
        e.sub_(m.unsqueeze(-1))
    e.exp_()
    z = e.sum(-1)
    log_z = m + z.log()
    pstar_dot_lp = _rowdot(e, x) / z  # sum_j P*_j log p_j
    # sum_j P*_j log P*_j = (1/tau) sum_j P*_j log p_j - logZ ; KL(P*||U) = log V + that >= 0.
    pstar_logpstar = pstar_dot_lp / tau - log_z
    kl = (log_v + pstar_logpstar).clamp_(min=0.0)
    lp_gold = _gold(x, target)
    beta = tau * alpha
    loss = -(1.0 - alpha) * lp_gold - alpha * pstar_dot_lp + beta * kl
    # Entropy of the smoothed target P_hat (for logging), from per-row scalars only.
    pstar_gold = (lp_gold / tau - log_z).exp()
    p_hat_gold = 1.0 - alpha + alpha * pstar_gold
    rest_plogp = pstar_logpstar - torch.special.xlogy(pstar_gold, pstar_gold)
    target_entropy = -(
        alpha * rest_plogp
        + torch.special.xlogy(alpha, alpha) * (1.0 - pstar_gold)
        + torch.special.xlogy(p_hat_gold, p_hat_gold)
    )
    return loss, -lp_gold, alpha, target_entropy, e, z


def _check_labo(tau: float, rho: float, alpha: Optional[float]) -> None:
    for name, value in (("tau", tau), ("rho", rho), ("alpha", alpha)):
        HP[name].check(value, name)


class _LaboFunction(torch.autograd.Function):
    """Token loss of Eq. 14 with P*, alpha, beta held constant; grad w.r.t. ``lprobs`` is ``-P_hat``.

    Forward needs one (N, V) float32 scratch buffer; it ends holding P* and backward turns it into
    the gradient in place, so backward allocates nothing of size (N, V).
    """

    @staticmethod
    def forward(ctx, lprobs, target, keep, tau, rho, alpha_fixed):
        loss, nll, alpha, target_entropy, e, z = _labo_forward(_work(lprobs.detach()), target, tau, rho, alpha_fixed)
        if ctx.needs_input_grad[0]:
            ctx.pstar = e.div_(z.unsqueeze(-1))  # P*, turned into the gradient in place by backward
        del e
        ctx.save_for_backward(target, keep, alpha)
        ctx.input_dtype = lprobs.dtype
        ctx.mark_non_differentiable(nll, alpha, target_entropy)
        return loss, nll, alpha, target_entropy

    @staticmethod
    def backward(ctx, grad_loss, grad_nll, _grad_alpha, _grad_ent):
        target, keep, alpha = ctx.saved_tensors
        grad = _take_buffer(ctx, "pstar")
        g = torch.where(keep, grad_loss.to(grad.dtype), 0.0)
        g_nll = torch.where(keep, grad_nll.to(grad.dtype), 0.0) if grad_nll is not None else torch.zeros_like(g)
        # d loss / d lprobs = -P_hat = -(alpha P* + (1 - alpha) onehot(y)); d nll / d lprobs = -onehot(y).
        grad.mul_((-alpha * g).unsqueeze(-1))
        gold = -((1.0 - alpha) * g + g_nll)
        grad.scatter_add_(-1, target.clamp(0, grad.size(-1) - 1).unsqueeze(-1), gold.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None, None, None, None


def labo_terms(
    lprobs: Tensor,
    target: Tensor,
    tau: float,
    rho: float = 0.5,
    alpha: Optional[float] = None,
    ignore_index: Optional[int] = None,
    reduce: bool = True,
) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """:func:`labo_loss` plus per-token statistics ``{"alpha", "target_entropy", "ntokens"}``.

    Statistics are sums over non-padding tokens (``reduce=True``) or per-token (``reduce=False``),
    in nats; they carry no gradient.
    """
    _check_labo(tau, rho, alpha)
    pad = _pad_mask(target, ignore_index)
    keep = torch.ones_like(target, dtype=torch.bool) if pad is None else ~pad
    loss, nll, a, ent = _LaboFunction.apply(lprobs, target, keep, float(tau), float(rho), alpha)
    loss, nll = _finish(loss, nll, pad, reduce, lprobs.dtype)
    a, ent = (torch.where(keep, t, 0.0) for t in (a, ent))
    stats = {"alpha": a, "target_entropy": ent, "ntokens": keep.float()}
    if reduce:
        stats = {k: v.sum() for k, v in stats.items()}
    return loss, nll, stats


def labo_loss(lprobs, target, tau, rho=0.5, alpha=None, ignore_index=None, reduce=True):
    """LABO token loss (Lu et al., Eq. 14), summed over non-padding tokens.

    ``loss = sum_j -P_hat_j log p_j + beta * KL(P* || U)``, with
    ``P* = softmax(log p / tau)`` (Theorem 1; tau = beta/alpha), ``P_hat = (1-alpha) onehot(y) + alpha P*``
    (Eq. 6), ``beta = tau * alpha``, and ``alpha = (log V - rho H(p)) / log V`` (Eq. 16, natural logs)
    when ``alpha`` is None, else the fixed float ``alpha`` (``rho`` unused).

    ``P*``, ``alpha`` and ``beta`` are detached (constants for backward), so the KL term has no
    gradient and the gradient w.r.t. the logits is exactly ``p - P_hat``. The returned ``loss``
    includes the KL term (it equals Eq. 14); ``nll_loss`` is the plain NLL. ``V = lprobs.size(-1)``.
    P* is computed in log space in float32, so fp16/bf16 inputs and huge logits stay finite.
    Limits: alpha=0 gives NLL; tau -> inf gives uniform smoothing with mass alpha over all V classes;
    tau=1 gives P* = p.
    """
    loss, nll, _ = labo_terms(lprobs, target, tau, rho, alpha, ignore_index, reduce)
    return loss, nll


def labo_logit_terms(lprobs: Tensor, target: Tensor, tau: float, rho: float = 0.5, alpha: Optional[float] = None,
                     scratch: Sequence[Tensor] = ()):
    """Eq. 14 for the chunked output layer: per token ``(loss, nll, {"alpha", "target_entropy"}, dz)``
    with ``dz = d loss / d logits = p - P_hat`` (P*, alpha, beta constant, as in :func:`labo_loss`),
    from ``lprobs = log_softmax(logits)`` (N, V) of kept tokens only (at least fp32).
    Every row's target distribution sums to 1, so log_softmax's backward reduces to ``p - P_hat``.
    ``scratch``: up to two buffers of lprobs's shape and dtype to use instead of allocating; with
    two, ``dz`` is the second, otherwise it overwrites ``lprobs`` (one fewer (N, V) buffer; with
    adaptive alpha one more ``exp`` pass)."""
    _check_labo(tau, rho, alpha)
    e_buf, p_buf = (*scratch, None, None)[:2]
    p = None if p_buf is None else torch.exp(lprobs, out=p_buf)
    loss, nll, a, ent, e, z = _labo_forward(lprobs, target, float(tau), float(rho), alpha, p=p, buf=e_buf)
    if p is None:  # the log-probs are used up: p in their place
        p = lprobs.exp_()
    dz = p.addcmul_(e, (a / z).unsqueeze(-1), value=-1.0)  # p - alpha P*
    del e
    dz.scatter_add_(-1, target.unsqueeze(-1), (a - 1.0).unsqueeze(-1))  # ... - (1 - alpha) onehot(y)
    return loss, nll, {"alpha": a, "target_entropy": ent}, dz


# ------------------------------------------------------------------------------------ baselines


class _ConfidencePenaltyFunction(torch.autograd.Function):
    """``-log p_y - beta H(p)`` per token; forward's ``p`` buffer becomes the gradient in backward.

    d/d log p_j = -[j=y] + beta p_j (log p_j + 1), which through log_softmax is the usual
    ``p - onehot + beta p (log p + H)`` w.r.t. the logits.
    """

    @staticmethod
    def forward(ctx, lprobs, target, keep, beta):
        x = _work(lprobs.detach())
        p = torch.exp(x)
        plogp, no_inf = _rowdot_checked(p, x)
        entropy = -plogp
        nll = -_gold(x, target)
        if ctx.needs_input_grad[0]:
            # p (log p + 1), with p log p := 0 at p = 0; backward only scales it and adds the gold term.
            ctx.grad_buf = p.addcmul_(p, x if no_inf else x.nan_to_num(neginf=0.0))
        ctx.save_for_backward(target, keep)
        ctx.beta, ctx.input_dtype = beta, lprobs.dtype
        ctx.mark_non_differentiable(nll)
        return nll - beta * entropy, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        target, keep = ctx.saved_tensors
        grad = _take_buffer(ctx, "grad_buf")
        g = torch.where(keep, grad_loss.to(grad.dtype), 0.0)
        g_nll = torch.where(keep, grad_nll.to(grad.dtype), 0.0) if grad_nll is not None else torch.zeros_like(g)
        grad.mul_((ctx.beta * g).unsqueeze(-1))
        grad.scatter_add_(-1, target.clamp(0, grad.size(-1) - 1).unsqueeze(-1), -(g + g_nll).unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None, None


def confidence_penalty_loss(lprobs, target, beta, ignore_index=None, reduce=True):
    """Confidence penalty (Pereyra et al., 2017): ``sum_tokens -log p_y - beta * H(p)``.

    ``H(p) = -sum_j p_j log p_j`` in nats, differentiated (the penalty's gradient pushes towards
    higher entropy). beta=0 gives NLL.
    """
    HP["beta"].check(beta, "beta")
    pad = _pad_mask(target, ignore_index)
    keep = torch.ones_like(target, dtype=torch.bool) if pad is None else ~pad
    loss, nll = _ConfidencePenaltyFunction.apply(lprobs, target, keep, float(beta))
    return _finish(loss, nll, pad, reduce, lprobs.dtype)


def _weighted_nll(lprobs, target, weight_fn, detach_weight, ignore_index, reduce):
    """``sum_tokens -w(p_y) log p_y``; ``w`` sees a detached ``p_y`` when ``detach_weight``."""
    pad = _pad_mask(target, ignore_index)
    lp_gold = _work(_gold(lprobs, target))  # gather first: only the (N,) gold column is promoted
    p_gold = lp_gold.exp()
    weight = weight_fn(p_gold.detach() if detach_weight else p_gold)
    nll = -lp_gold
    return _finish(weight * nll, nll, pad, reduce, lprobs.dtype)


def focal_loss(lprobs, target, gamma, ignore_index=None, reduce=True, detach_weight=False):
    """Focal loss (Lin et al., 2017): ``sum_tokens -(1 - p_y)^gamma log p_y``.

    ``detach_weight=False`` (default, Lin et al.'s form) differentiates through the weight;
    ``True`` treats it as a constant (a re-weighted NLL). gamma=0 gives NLL.
    """
    HP["gamma"].check(gamma, "gamma")
    return _weighted_nll(
        lprobs, target, lambda p: (1.0 - p).pow(gamma), detach_weight, ignore_index, reduce
    )


def anti_focal_loss(
    lprobs, target, gamma, alpha=1.0, ignore_index=None, reduce=True, detach_weight=True
):
    """Anti-focal loss (Raunak et al., 2020): ``sum_tokens -(1 + alpha * p_y)^gamma log p_y``.

    ``detach_weight=True`` (default) matches the authors' public code, where ``p_y`` in the weight
    is detached (a re-weighted NLL); ``False`` differentiates through it. Their NMT setting is
    gamma=1, alpha=0.5; gamma=0 or alpha=0 gives NLL.
    """
    HP["afl_gamma"].check(gamma, "gamma")
    HP["afl_alpha"].check(alpha, "alpha")
    return _weighted_nll(
        lprobs, target, lambda p: (1.0 + alpha * p).pow(gamma), detach_weight, ignore_index, reduce
    )


# --------------------------------------------------------------------------------- distillation


def label_smoothing_loss(lprobs, target, epsilon, ignore_index=None, reduce=True):
    """Uniform label smoothing in fairseq's convention, ``sum_tokens sum_j -q_j log p_j`` with
    ``q_y = 1 - eps`` and ``q_j = eps/(V-1)`` elsewhere (LABO's warm-up). Hugging Face's
    ``label_smoothing_factor`` spreads eps over all V classes (``q_y = 1 - eps + eps/V``): the same
    target as this one with ``eps' = eps (V-1)/V``. eps=0 gives NLL."""
    HP["epsilon"].check(epsilon, "epsilon")
    pad = _pad_mask(target, ignore_index)
    loss, nll = _label_smoothed(_work(lprobs), target, float(epsilon))
    return _finish(loss, nll, pad, reduce, lprobs.dtype)


def _label_smoothed(x: Tensor, target: Tensor, epsilon: float) -> Tuple[Tensor, Tensor]:
    """fairseq's ``label_smoothed_nll_loss`` per token: ``(1 - eps - eps/(V-1)) nll + eps/(V-1) sum_j -x_j``
    (mass ``1 - eps`` on the gold, ``eps/(V-1)`` elsewhere); plain NLL at eps = 0."""
    nll = -_gold(x, target)
    if epsilon == 0.0:
        return nll, nll
    off, gold = _label_smoothed_target(epsilon, x.size(-1))
    return (gold - off) * nll - off * x.sum(-1), nll


def _label_smoothed_target(epsilon: float, vocab: int) -> Tuple[float, float]:
    """fairseq's smoothed target ``q``: ``(q_j for j != y, q_y) = (eps/(V-1), 1 - eps)``; sums to 1."""
    return epsilon / (vocab - 1), 1.0 - epsilon


def label_smoothing_logit_terms(lprobs: Tensor, target: Tensor, epsilon: float, scratch: Sequence[Tensor] = ()):
    """:func:`label_smoothing_loss` for the chunked output layer: per token ``(loss, nll, {}, dz)``
    with ``dz = d loss / d logits = p - q``, from ``lprobs = log_softmax(logits)`` (N, V) of kept
    tokens only (at least fp32), which ``dz`` overwrites (``scratch`` is not needed)."""
    HP["epsilon"].check(epsilon, "epsilon")
    loss, nll = _label_smoothed(lprobs, target, float(epsilon))
    off, gold = _label_smoothed_target(float(epsilon), lprobs.size(-1))
    dz = lprobs.exp_()
    if off:
        dz.sub_(off)
    dz.scatter_add_(-1, target.unsqueeze(-1), dz.new_full((dz.size(0), 1), off - gold))
    return loss, nll, {}, dz


def _teacher_kl(log_q: Tensor, log_pt: Tensor, target: Tensor, teacher_topk: Optional[int]) -> Tuple[Tensor, Tensor]:
    """Per token, ``KL(p_t || q)`` and the teacher's probability of the gold token; with
    ``teacher_topk`` (below V), over the teacher's k most probable tokens, renormalized."""
    if teacher_topk is not None and teacher_topk < log_pt.size(-1):
        # pytorch/translate's word-level KD: the teacher's k most probable tokens, renormalized.
        top, idx = log_pt.topk(teacher_topk, dim=-1)
        log_pt_k = torch.log_softmax(top, -1)
        pt_k = log_pt_k.exp()
        kl = (pt_k * (log_pt_k - log_q.gather(-1, idx))).sum(-1)
        gold_in = idx.eq(target.unsqueeze(-1))
        return kl, torch.where(gold_in, pt_k, 0.0).sum(-1)
    pt = log_pt.exp()
    # p_t log(p_t / q) with 0 log 0 = 0, also where q is 0 (an impossible class the teacher also excludes).
    kl = torch.where(pt > 0, pt * (log_pt - log_q), 0.0).sum(-1)
    return kl, _gold(pt, target)


def distillation_terms(
    lprobs: Tensor,
    target: Tensor,
    teacher_lprobs: Tensor,
    alpha: float,
    temperature: float = 1.0,
    epsilon: float = 0.0,
    ignore_index: Optional[int] = None,
    reduce: bool = True,
    teacher_topk: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
    """:func:`distillation_loss` plus statistics ``{"kd_loss", "teacher_nll", "gamma", "ntokens"}``
    (sums over non-padding tokens, or per token with ``reduce=False``; no gradient).

    ``kd_loss`` is the soft term ``T^2 KL`` in nats; ``teacher_nll = -log p_t(y)`` of the teacher
    at T = 1; ``gamma = (1 - p_t(y; T)) V / (V - 1)`` (Mueller et al.'s mass off the gold, scaled so
    that uniform label smoothing eps has gamma = eps), of the (top-k) target the student sees.
    """
    HP["kd_alpha"].check(alpha, "alpha")
    HP["kd_temperature"].check(temperature, "temperature")
    HP["epsilon"].check(epsilon, "epsilon")
    HP["kd_topk"].check(teacher_topk, "teacher_topk")
    if teacher_lprobs.shape != lprobs.shape:
        raise ValueError(f"teacher_lprobs has shape {tuple(teacher_lprobs.shape)}, lprobs {tuple(lprobs.shape)}")
    x = _work(lprobs)
    t = _work(teacher_lprobs.detach()).to(x.dtype)
    vocab = x.size(-1)
    temp = float(temperature)
    ls, nll = _label_smoothed(x, target, epsilon)
    # log_softmax of log-probabilities divided by T is softmax(logits / T): the row constant cancels.
    log_q = x if temp == 1.0 else torch.log_softmax(x / temp, -1)
    log_pt = t if temp == 1.0 else torch.log_softmax(t / temp, -1)
    kl, pt_gold = _teacher_kl(log_q, log_pt, target, teacher_topk)
    kd = (temp * temp) * kl
    loss = (1.0 - alpha) * ls + alpha * kd if alpha > 0.0 else ls
    pad = _pad_mask(target, ignore_index)
    keep = torch.ones_like(target, dtype=torch.bool) if pad is None else ~pad
    with torch.no_grad():
        stats = {
            "kd_loss": kd.detach(),
            "teacher_nll": -_gold(t, target),
            "gamma": (1.0 - pt_gold) * (vocab / (vocab - 1)),
            "ntokens": keep.to(x.dtype),
        }
        stats = {k: torch.where(keep, v, 0.0) for k, v in stats.items()}
        if reduce:
            stats = {k: v.sum() for k, v in stats.items()}
    loss, nll = _finish(loss, nll, pad, reduce, lprobs.dtype)
    return loss, nll, stats


def distillation_loss(lprobs, target, teacher_lprobs, alpha, temperature=1.0, epsilon=0.0, ignore_index=None,
                      reduce=True, teacher_topk=None):
    """Word-level knowledge distillation (Hinton et al., 2015), per non-padding token::

        (1 - alpha) * LS_eps(p, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

    ``s = lprobs`` (student), ``t = teacher_lprobs`` (log-probabilities; detached: the teacher gets
    no gradient), ``LS_eps`` fairseq's label smoothing (plain NLL at eps = 0). T^2 convention: the
    soft term is multiplied by T^2 so that its gradient w.r.t. the logits keeps its scale as T
    grows (at T = 1 the factor is 1). Units: nats. ``teacher_topk=k`` replaces ``softmax(t / T)``
    by its k largest probabilities, renormalized (pytorch/translate's word-level KD). Limits:
    alpha = 0 is LS_eps; a teacher equal to the student gives a zero soft term; at T = 1 the
    gradient w.r.t. the student's logits is ``(1 - alpha)(p - onehot(y)) + alpha (p - p_t)`` (eps = 0).
    Computed in at least float32 with log-softmax, so fp16/bf16 inputs and huge logits stay finite.
    """
    loss, nll, _ = distillation_terms(lprobs, target, teacher_lprobs, alpha, temperature, epsilon, ignore_index,
                                      reduce, teacher_topk)
    return loss, nll
