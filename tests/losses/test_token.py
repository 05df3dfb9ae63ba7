"""labo_fairseq.losses against independent formulas: values, logit gradients, padding, limits, dtypes."""

import math

import pytest
import torch

from labo_fairseq.losses import anti_focal_loss, confidence_penalty_loss, focal_loss, labo_loss, labo_terms

PAD = 1
V = 37
N = 23


def make_batch(n=N, v=V, scale=3.0, seed=0, dtype=torch.float64, n_pad=5):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(2, v, (n,), generator=g)
    target[torch.randperm(n, generator=g)[:n_pad]] = PAD
    return logits.requires_grad_(), target


def ref_labo(lp, y, tau, rho=0.5, alpha=None):
    """Eq. 14/16 written out with the full smoothed target (float64, no tricks)."""
    lp = lp.double()
    vocab = lp.size(-1)
    p = lp.exp()
    if alpha is None:
        a = (math.log(vocab) - rho * -torch.special.xlogy(p, p).sum(-1)) / math.log(vocab)
    else:
        a = torch.full((lp.size(0),), float(alpha), dtype=lp.dtype)
    a = a.detach()
    pstar = torch.softmax(lp.detach() / tau, -1)
    phat = a[:, None] * pstar
    phat[torch.arange(len(y)), y] += 1 - a
    kl = (pstar * math.log(vocab) + torch.special.xlogy(pstar, pstar)).sum(-1)  # 0 log 0 = 0
    loss = -torch.where(phat > 0, phat * lp, 0.0).sum(-1) + tau * a * kl
    return loss, phat


def nll_of(lp, y):
    return -lp.double().gather(-1, y[:, None]).squeeze(-1)


def keep(y):
    return y.ne(PAD)


def grad_of(fn, logits, target, **kw):
    logits = logits.detach().clone().requires_grad_()
    loss, nll = fn(torch.log_softmax(logits, -1), target, ignore_index=PAD, **kw)
    loss.backward()
    return loss.detach(), nll.detach(), logits.grad


LOSSES = {
    "labo": (labo_loss, {"tau": 1.15}),
    "labo_fixed_alpha": (labo_loss, {"tau": 1.25, "alpha": 0.3}),
    "cp": (confidence_penalty_loss, {"beta": 0.4}),
    "focal": (focal_loss, {"gamma": 2.0}),
    "focal_detached": (focal_loss, {"gamma": 2.0, "detach_weight": True}),
    "anti_focal": (anti_focal_loss, {"gamma": 1.0, "alpha": 0.5}),
    "anti_focal_differentiated": (anti_focal_loss, {"gamma": 2.0, "alpha": 1.0, "detach_weight": False}),
}


# -------------------------------------------------------------------------------------- LABO


@pytest.mark.parametrize("alpha", [None, 0.3])
@pytest.mark.parametrize("tau", [0.7, 1.15, 3.0])
def test_labo_value_and_gradient_match_reference(tau, alpha):
    logits, y = make_batch()
    loss, nll, grad = grad_of(labo_loss, logits, y, tau=tau, rho=0.5, alpha=alpha)
    lp = torch.log_softmax(logits.detach(), -1)
    ref_loss, phat = ref_labo(lp, y, tau, 0.5, alpha)
    k = keep(y)
    torch.testing.assert_close(loss, ref_loss[k].sum())
    torch.testing.assert_close(nll, nll_of(lp, y)[k].sum())
    # The gradient w.r.t. the logits is exactly p - P_hat on real tokens, 0 on padding.
    expected = torch.where(k[:, None], lp.exp() - phat, 0.0)
    torch.testing.assert_close(grad, expected)


def test_labo_reference_gradient_via_autograd():
    """The reference loss differentiated by autograd (P*, alpha detached) agrees too."""
    logits, y = make_batch(seed=3)
    _, _, grad = grad_of(labo_loss, logits, y, tau=1.15)
    z = logits.detach().clone().requires_grad_()
    ref_loss, _ = ref_labo(torch.log_softmax(z, -1), y, 1.15)
    ref_loss[keep(y)].sum().backward()
    torch.testing.assert_close(grad, z.grad)


def test_labo_adaptive_alpha_in_range_and_rho_zero_is_full_smoothing():
    logits, y = make_batch(n_pad=0)
    # Rows from peaked (H ~ 0, alpha ~ 1) to uniform (H = log V, alpha = 1 - rho).
    logits = torch.cat([logits.detach(), torch.zeros(1, logits.size(1)), 1e3 * torch.eye(logits.size(1))[:1]])
    y = torch.cat([y, y[:2]])
    lp = torch.log_softmax(logits, -1)
    log_v = math.log(lp.size(1))
    entropy = -(lp.exp() * lp).sum(-1)
    for rho in (0.5, 1.0):
        _, _, st = labo_terms(lp, y, tau=1.15, rho=rho, reduce=False)
        alpha = st["alpha"]
        assert bool(((alpha >= 0) & (alpha <= 1)).all())
        torch.testing.assert_close(alpha, (log_v - rho * entropy) / log_v)
        torch.testing.assert_close(alpha[-2].item(), 1.0 - rho)  # uniform row
        torch.testing.assert_close(alpha[-1].item(), 1.0)  # one-hot row
    # rho=0 -> alpha=1: target is P* alone (no one-hot part).
    loss, _ = labo_loss(lp, y, tau=2.0, rho=0.0, reduce=False)
    ref, _ = ref_labo(lp, y, 2.0, alpha=1.0)
    torch.testing.assert_close(loss, ref)


def test_labo_limit_alpha_zero_is_nll():
    logits, y = make_batch()
    lp = torch.log_softmax(logits.detach(), -1)
    loss, nll = labo_loss(lp, y, tau=1.15, alpha=0.0, ignore_index=PAD)
    torch.testing.assert_close(loss, nll)
    torch.testing.assert_close(nll, nll_of(lp, y)[keep(y)].sum())


def test_labo_limit_large_tau_is_uniform_smoothing():
    logits, y = make_batch()
    lp = torch.log_softmax(logits.detach(), -1)
    a = 0.2
    loss, _ = labo_loss(lp, y, tau=1e7, alpha=a, ignore_index=PAD, reduce=False)
    # P* -> U: target (1-a) onehot + a/V everywhere, KL(U||U) = 0.
    uniform = (1 - a) * nll_of(lp, y) + a * (-lp.mean(-1))
    torch.testing.assert_close(loss, torch.where(keep(y), uniform, 0.0), rtol=1e-5, atol=1e-5)


def test_labo_tau_one_target_is_model_distribution():
    logits, y = make_batch()
    _, _, grad = grad_of(labo_loss, logits, y, tau=1.0, alpha=0.4)
    p = torch.softmax(logits.detach(), -1)
    onehot = torch.nn.functional.one_hot(y, V).double()
    # P_hat = 0.6 onehot + 0.4 p  ->  grad = p - P_hat = 0.6 (p - onehot)
    torch.testing.assert_close(grad, torch.where(keep(y)[:, None], 0.6 * (p - onehot), 0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_labo_half_precision_inputs(dtype):
    logits, y = make_batch(dtype=torch.float32)
    lp32 = torch.log_softmax(logits.detach(), -1)
    lp = lp32.to(dtype).requires_grad_()
    loss, nll = labo_loss(lp, y, tau=1.15, ignore_index=PAD)
    loss.backward()
    assert loss.dtype == dtype and torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    ref, _ = ref_labo(lp.detach(), y, 1.15)
    torch.testing.assert_close(loss.double(), ref[keep(y)].sum(), rtol=1e-2, atol=0)


def test_labo_huge_logits_finite_and_correct():
    logits, y = make_batch(scale=1e4, dtype=torch.float32)
    _, _, grad = grad_of(labo_loss, logits, y, tau=1.15)
    lp = torch.log_softmax(logits.detach().double(), -1)
    loss, _ = labo_loss(lp.float(), y, tau=1.15, ignore_index=PAD, reduce=False)
    ref, phat = ref_labo(lp, y, 1.15)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), torch.where(keep(y), ref, 0.0), rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(grad.double(), torch.where(keep(y)[:, None], lp.exp() - phat, 0.0), rtol=0, atol=1e-5)


def test_labo_huge_logits_half_precision():
    logits, y = make_batch(scale=1e4, dtype=torch.float32)
    lp = torch.log_softmax(logits.detach(), -1).half().requires_grad_()
    loss, _ = labo_loss(lp, y, tau=1.15, ignore_index=PAD)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()


def test_labo_impossible_tokens_minus_inf():
    """A -inf log-prob (a masked class) has p = P* = 0: finite loss, zero gradient there, exact values."""
    logits, y = make_batch(n_pad=0)
    z = torch.cat([logits.detach(), torch.full((N, 1), -math.inf, dtype=logits.dtype)], -1).requires_grad_()
    lp = torch.log_softmax(z, -1)
    loss, _ = labo_loss(lp, y, tau=1.15, reduce=False)
    loss.sum().backward()
    ref, phat = ref_labo(lp.detach(), y, 1.15)
    torch.testing.assert_close(loss.detach(), ref)
    torch.testing.assert_close(z.grad, lp.detach().exp() - phat)
    assert (z.grad[:, -1] == 0).all()


def test_confidence_penalty_impossible_tokens_minus_inf():
    """A -inf log-prob (p = 0) changes neither value nor gradient of the other classes (no NaN)."""
    fn, kw = LOSSES["cp"]
    logits, y = make_batch(n_pad=0)
    z = torch.cat([logits.detach(), torch.full((N, 1), -math.inf, dtype=logits.dtype)], -1).requires_grad_()
    loss, _ = fn(torch.log_softmax(z, -1), y, **kw)
    loss.backward()
    finite, _, finite_grad = grad_of(fn, logits, y, **kw)
    torch.testing.assert_close(loss.detach(), finite)
    torch.testing.assert_close(z.grad[:, :-1], finite_grad)
    assert (z.grad[:, -1] == 0).all()


# --------------------------------------------------------------------------------- baselines


def test_confidence_penalty_matches_formula_and_grad():
    logits, y = make_batch()
    loss, nll, grad = grad_of(confidence_penalty_loss, logits, y, beta=0.4)
    z = logits.detach().clone().requires_grad_()
    lp = torch.log_softmax(z, -1)
    ref = nll_of(lp, y) - 0.4 * -(lp.exp() * lp).sum(-1)
    ref[keep(y)].sum().backward()
    torch.testing.assert_close(loss, ref[keep(y)].sum().detach())
    torch.testing.assert_close(grad, z.grad)


@pytest.mark.parametrize("detach", [False, True])
def test_focal_matches_formula_and_grad(detach):
    logits, y = make_batch()
    loss, _, grad = grad_of(focal_loss, logits, y, gamma=2.0, detach_weight=detach)
    z = logits.detach().clone().requires_grad_()
    lp_y = torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    p_y = lp_y.exp().detach() if detach else lp_y.exp()
    ref = -((1 - p_y) ** 2) * lp_y
    ref[keep(y)].sum().backward()
    torch.testing.assert_close(loss, ref[keep(y)].sum().detach())
    torch.testing.assert_close(grad, z.grad)


@pytest.mark.parametrize("detach", [False, True])
def test_anti_focal_matches_formula_and_grad(detach):
    logits, y = make_batch()
    loss, _, grad = grad_of(anti_focal_loss, logits, y, gamma=2.0, alpha=0.5, detach_weight=detach)
    z = logits.detach().clone().requires_grad_()
    lp_y = torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    p_y = lp_y.exp().detach() if detach else lp_y.exp()
    ref = -((1 + 0.5 * p_y) ** 2) * lp_y
    ref[keep(y)].sum().backward()
    torch.testing.assert_close(loss, ref[keep(y)].sum().detach())
    torch.testing.assert_close(grad, z.grad)


def test_detached_and_differentiated_weights_differ_only_in_gradient():
    logits, y = make_batch()
    for fn, kw in ((focal_loss, {"gamma": 2.0}), (anti_focal_loss, {"gamma": 2.0, "alpha": 1.0})):
        a = grad_of(fn, logits, y, detach_weight=True, **kw)
        b = grad_of(fn, logits, y, detach_weight=False, **kw)
        torch.testing.assert_close(a[0], b[0])
        assert (a[2] - b[2]).abs().max() > 1e-3


def test_anti_focal_default_is_detached():
    logits, y = make_batch()
    default = grad_of(anti_focal_loss, logits, y, gamma=1.0, alpha=0.5)[2]
    detached = grad_of(anti_focal_loss, logits, y, gamma=1.0, alpha=0.5, detach_weight=True)[2]
    torch.testing.assert_close(default, detached)


@pytest.mark.parametrize(
    "fn,kw",
    [
        (confidence_penalty_loss, {"beta": 0.0}),
        (focal_loss, {"gamma": 0.0}),
        (anti_focal_loss, {"gamma": 0.0}),
        (anti_focal_loss, {"gamma": 1.0, "alpha": 0.0}),
    ],
)
def test_baseline_limits_are_nll(fn, kw):
    logits, y = make_batch()
    loss, nll, grad = grad_of(fn, logits, y, **kw)
    torch.testing.assert_close(loss, nll)
    onehot = torch.nn.functional.one_hot(y, V).double()
    torch.testing.assert_close(grad, torch.where(keep(y)[:, None], torch.softmax(logits.detach(), -1) - onehot, 0.0))


# ----------------------------------------------------------------------------- all losses


@pytest.mark.parametrize("name", LOSSES)
def test_reduce_is_sum_of_unreduced(name):
    fn, kw = LOSSES[name]
    logits, y = make_batch()
    lp = torch.log_softmax(logits.detach(), -1)
    loss, nll = fn(lp, y, ignore_index=PAD, **kw)
    loss_t, nll_t = fn(lp, y, ignore_index=PAD, reduce=False, **kw)
    assert loss_t.shape == (N,) and nll_t.shape == (N,)
    assert (loss_t[~keep(y)] == 0).all() and (nll_t[~keep(y)] == 0).all()
    torch.testing.assert_close(loss, loss_t.sum())
    torch.testing.assert_close(nll, nll_t.sum())
    torch.testing.assert_close(nll, nll_of(lp, y)[keep(y)].sum())


@pytest.mark.parametrize("name", LOSSES)
def test_padding_invariance(name):
    """Adding padded positions (with arbitrary finite log-probs) changes nothing."""
    fn, kw = LOSSES[name]
    logits, y = make_batch(n_pad=0)
    base = grad_of(fn, logits, y, **kw)
    extra_logits, _ = make_batch(n=7, seed=9, scale=20.0)
    padded_logits = torch.cat([logits.detach(), extra_logits.detach()])
    padded_y = torch.cat([y, torch.full((7,), PAD)])
    padded = grad_of(fn, padded_logits, padded_y, **kw)
    torch.testing.assert_close(padded[0], base[0])
    torch.testing.assert_close(padded[1], base[1])
    torch.testing.assert_close(padded[2][:N], base[2])
    assert (padded[2][N:] == 0).all()


@pytest.mark.parametrize("name", LOSSES)
def test_no_ignore_index_counts_every_token(name):
    fn, kw = LOSSES[name]
    logits, y = make_batch()
    lp = torch.log_softmax(logits.detach(), -1)
    _, nll = fn(lp, y, **kw)
    torch.testing.assert_close(nll, nll_of(lp, y).sum())


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda lp, y: labo_loss(lp, y, tau=0.0), "tau"),
        (lambda lp, y: labo_loss(lp, y, tau=-1.0), "tau"),
        (lambda lp, y: labo_loss(lp, y, tau=1.0, rho=1.5), "rho"),
        (lambda lp, y: labo_loss(lp, y, tau=1.0, alpha=-0.1), "alpha"),
        (lambda lp, y: labo_loss(lp, y, tau=1.0, alpha=1.1), "alpha"),
        (lambda lp, y: confidence_penalty_loss(lp, y, beta=-0.1), "beta"),
        (lambda lp, y: focal_loss(lp, y, gamma=-1.0), "gamma"),
        (lambda lp, y: anti_focal_loss(lp, y, gamma=-1.0), "gamma"),
        (lambda lp, y: labo_loss(lp, y, tau=float("nan")), "tau"),
    ],
)
def test_invalid_hyperparameters_raise(call, match):
    logits, y = make_batch()
    with pytest.raises(ValueError, match=match):
        call(torch.log_softmax(logits.detach(), -1), y)


@pytest.mark.parametrize("name", ["labo", "cp"])
def test_second_backward_through_reused_buffer_is_an_error(name):
    """LABO and CP turn their forward buffer into the gradient: a second backward must fail loudly."""
    fn, kw = LOSSES[name]
    logits, y = make_batch()
    loss, _ = fn(torch.log_softmax(logits, -1), y, ignore_index=PAD, **kw)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


class _Ctx:
    """A stand-in for autograd's context, to see what forward keeps for backward."""

    def __init__(self, needs_grad):
        self.needs_input_grad = (needs_grad,) + (False,) * 5

    def save_for_backward(self, *tensors):
        self.saved = tensors

    def mark_non_differentiable(self, *tensors):
        pass


@pytest.mark.parametrize("name,attr", [("labo", "pstar"), ("cp", "grad_buf")])
def test_forward_keeps_its_vocabulary_buffer_only_when_a_gradient_is_needed(name, attr):
    from labo_fairseq.losses.token import _ConfidencePenaltyFunction, _LaboFunction

    logits, y = make_batch()
    lp = torch.log_softmax(logits.detach(), -1)
    keep = y.ne(PAD)
    args = (1.15, 0.5, None) if name == "labo" else (0.1,)
    fn = _LaboFunction if name == "labo" else _ConfidencePenaltyFunction
    for needs_grad in (False, True):
        ctx = _Ctx(needs_grad)
        fn.forward(ctx, lp, y, keep, *args)
        kept = getattr(ctx, attr, None)
        assert (kept is not None) == needs_grad
        assert all(t.numel() < lp.numel() for t in ctx.saved)  # nothing else of size (N, V)
        if needs_grad:
            assert kept.shape == lp.shape
