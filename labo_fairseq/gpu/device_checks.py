"""Every loss of labo_fairseq.losses on a device, in fp32/fp16/bf16, against float64 on the CPU: a
pytest module shipped in the package, so that ``gpu_check`` runs it from an installed wheel
(``pytest --pyargs labo_fairseq.gpu.device_checks``); the checkout's ``tests/gpu`` collects the same tests.

The ``device`` parameter is ``cpu`` (normal suite) and ``cuda`` (marker ``gpu``; skipped with the
reason where CUDA is absent), so the GPU run checks exactly what CI checks on the CPU.
Two ways the log-probs reach a loss:
- ``fairseq``: fp32 ``log_softmax`` of the (half) model's logits, as fairseq's
  ``get_normalized_probs`` hands them to a criterion;
- ``raw``: ``log_softmax`` in the logits' own dtype (raw half log-probs).
The float64 reference starts from the very same (rounded) logits, so the tolerances measure the
computation, not the rounding of the inputs.
"""

import math

import pytest
import torch

from labo_fairseq.losses import anti_focal_loss, confidence_penalty_loss, focal_loss, labo_loss

PAD = 1
N, V = 64, 512

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available (no GPU or a CPU-only torch)")]),
]
# (logits dtype, how the log-probs are made); fp32 has only one way.
PRECISIONS = [("float32", "fairseq"), ("float16", "fairseq"), ("float16", "raw"),
              ("bfloat16", "fairseq"), ("bfloat16", "raw")]
# Relative tolerances (of the summed loss, and of the gradient's max-abs error over its max-abs
# value). The fairseq path computes in fp32 and only the logit gradient is rounded to half; the
# raw path also rounds the log-probs and the loss to half (fp16 eps 9.8e-4, bf16 eps 7.8e-3).
TOL = {
    ("float32", "fairseq"): (1e-5, 1e-5),
    ("float16", "fairseq"): (1e-5, 2e-3),
    ("bfloat16", "fairseq"): (1e-5, 1.6e-2),
    ("float16", "raw"): (2e-3, 8e-3),
    ("bfloat16", "raw"): (1.6e-2, 3e-2),
}


# ------------------------------------------------------------------ float64 references (CPU)

def _gold(lp, y):
    return lp.gather(-1, y.clamp(min=0)[:, None]).squeeze(-1)


def ref_labo(lp, y, tau, rho=0.5, alpha=None):
    v = lp.size(-1)
    p = lp.exp()
    a = (math.log(v) + rho * (p * lp).sum(-1)) / math.log(v) if alpha is None else torch.full_like(lp[:, 0], alpha)
    a = a.clamp(0, 1).detach()
    pstar = torch.softmax(lp.detach() / tau, -1)
    kl = (torch.special.xlogy(pstar, pstar) + pstar * math.log(v)).sum(-1)  # 0 log 0 = 0
    return -(1 - a) * _gold(lp, y) - a * (pstar * lp).sum(-1) + tau * a * kl


def ref_cp(lp, y, beta):
    return -_gold(lp, y) + beta * (lp.exp() * lp).sum(-1)


def ref_focal(lp, y, gamma):
    return -(1 - _gold(lp, y).exp()) ** gamma * _gold(lp, y)


def ref_anti_focal(lp, y, gamma, alpha):
    return -(1 + alpha * _gold(lp, y).exp().detach()) ** gamma * _gold(lp, y)


# name -> (loss under test, its float64 reference); every loss at its default weight convention.
LOSSES = {
    "labo": (lambda lp, y, **k: labo_loss(lp, y, 1.15, ignore_index=PAD, **k), lambda lp, y: ref_labo(lp, y, 1.15)),
    "labo_fixed_alpha": (lambda lp, y, **k: labo_loss(lp, y, 1.25, alpha=0.1, ignore_index=PAD, **k),
                         lambda lp, y: ref_labo(lp, y, 1.25, alpha=0.1)),
    "cp": (lambda lp, y, **k: confidence_penalty_loss(lp, y, 0.1, ignore_index=PAD, **k), lambda lp, y: ref_cp(lp, y, 0.1)),
    "focal": (lambda lp, y, **k: focal_loss(lp, y, 2.0, ignore_index=PAD, **k), lambda lp, y: ref_focal(lp, y, 2.0)),
    "anti_focal": (lambda lp, y, **k: anti_focal_loss(lp, y, 1.0, 0.5, ignore_index=PAD, **k),
                   lambda lp, y: ref_anti_focal(lp, y, 1.0, 0.5)),
}


def make_batch(dtype, scale=3.0, n=N, v=V, seed=0, n_pad=N // 8):
    """Logits in ``dtype`` (generated on the CPU, so every device sees the same numbers), targets
    with ``n_pad`` padded positions."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).to(getattr(torch, dtype))
    target = torch.randint(2, v, (n,), generator=g)
    target[torch.randperm(n, generator=g)[:n_pad]] = PAD
    return logits, target


def run(name, logits, target, device, mode, reduce=True):
    """(loss, nll, logit gradient) on ``device``; the gradient of the summed loss w.r.t. the logits."""
    z = logits.to(device, copy=True).requires_grad_()
    lp = torch.log_softmax(z.float() if mode == "fairseq" else z, -1)
    loss, nll = LOSSES[name][0](lp, target.to(device), reduce=reduce)
    loss.float().sum().backward()
    return loss.detach().cpu(), nll.detach().cpu(), z.grad.cpu()


def reference(name, logits, target):
    z = logits.to(torch.float64, copy=True).requires_grad_()
    lp = torch.log_softmax(z, -1)
    keep = target.ne(PAD)
    loss = torch.where(keep, LOSSES[name][1](lp, target), 0.0).sum()
    nll = torch.where(keep, -_gold(lp, target), 0.0).sum()
    loss.backward()
    return loss.detach(), nll.detach(), z.grad


def rel_err(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,mode", PRECISIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_value_and_gradient_match_float64(name, dtype, mode, device):
    logits, target = make_batch(dtype)
    loss, nll, grad = run(name, logits, target, device, mode)
    ref_loss, ref_nll, ref_grad = reference(name, logits, target)
    tol_value, tol_grad = TOL[(dtype, mode)]
    assert grad.dtype == logits.dtype
    assert loss.dtype == (torch.float32 if mode == "fairseq" else logits.dtype)
    assert rel_err(loss, ref_loss) <= tol_value, (rel_err(loss, ref_loss), tol_value)
    assert rel_err(nll, ref_nll) <= tol_value, (rel_err(nll, ref_nll), tol_value)
    assert rel_err(grad, ref_grad) <= tol_grad, (rel_err(grad, ref_grad), tol_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,mode", PRECISIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_logits_of_magnitude_1e4_stay_finite(name, dtype, mode, device):
    """|logits| up to 1e4 (a diverging model): per-token loss, NLL and gradient finite and right.

    Per token (reduce=False): a sum of such losses can exceed fp16's range, which is the caller's
    concern (fairseq sums fp32 log-probs)."""
    g = torch.Generator().manual_seed(1)
    logits = ((torch.rand(N, V, generator=g, dtype=torch.float64) * 2 - 1) * 1e4).to(getattr(torch, dtype))
    _, target = make_batch(dtype)
    loss, nll, grad = run(name, logits, target, device, mode, reduce=False)
    assert torch.isfinite(loss).all() and torch.isfinite(nll).all() and torch.isfinite(grad).all()
    ref_loss, _, ref_grad = reference(name, logits, target)
    tol_value, tol_grad = TOL[(dtype, mode)]
    assert rel_err(loss.double().sum(), ref_loss) <= tol_value
    assert rel_err(grad, ref_grad) <= tol_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,mode", PRECISIONS)
@pytest.mark.parametrize("name", LOSSES)
def test_padding_is_ignored(name, dtype, mode, device):
    """Padded positions with wild (but finite) logits change neither value nor gradient, and get
    exactly zero gradient."""
    logits, target = make_batch(dtype, n_pad=0)
    wild, _ = make_batch(dtype, scale=1e3, n=17, seed=5, n_pad=0)
    padded_logits = torch.cat([logits, wild])
    padded_target = torch.cat([target, torch.full((17,), PAD)])
    loss, nll, grad = run(name, logits, target, device, mode)
    p_loss, p_nll, p_grad = run(name, padded_logits, padded_target, device, mode)
    assert torch.equal(p_grad[N:], torch.zeros_like(p_grad[N:]))
    tol_value, tol_grad = TOL[(dtype, mode)]
    # Not bit-equal: a reduction over more rows may sum in another order.
    assert rel_err(p_loss, loss.double()) <= tol_value and rel_err(p_nll, nll.double()) <= tol_value
    assert rel_err(p_grad[:N], grad.double()) <= tol_grad
