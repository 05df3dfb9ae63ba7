"""labo_fairseq.losses.distillation_loss against an independent formula: values, logit gradients,
the limits, padding, top-k, half precision and huge logits."""

import math

import pytest
import torch

from labo_fairseq.losses import distillation_loss, distillation_terms

PAD = 1
V = 29
N = 17


def batch(seed=0, scale=3.0, n_pad=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(N, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(N, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(2, V, (N,), generator=g)
    y[torch.randperm(N, generator=g)[:n_pad]] = PAD
    return s, t, y


def reference(s_logits, t_logits, y, alpha, T, eps):
    """Per-token loss written out in float64: explicit LS target and explicit cross-entropy form
    ``H(p_t, q) - H(p_t)`` of the KL."""
    lp = torch.log_softmax(s_logits.double(), -1)
    target = torch.full_like(lp, eps / (V - 1))
    target[torch.arange(len(y)), y] = 1.0 - eps
    ls = -(target * lp).sum(-1)
    q = torch.log_softmax(s_logits.double() / T, -1)
    pt = torch.softmax(t_logits.double() / T, -1)
    kl = -(pt * q).sum(-1) + torch.special.xlogy(pt, pt).sum(-1)
    return (1 - alpha) * ls + alpha * T * T * kl


def run(s_logits, t_logits, y, **kw):
    s = s_logits.detach().clone().requires_grad_()
    loss, nll = distillation_loss(torch.log_softmax(s, -1), y, torch.log_softmax(t_logits, -1), ignore_index=PAD, **kw)
    loss.backward()
    return loss.detach(), nll.detach(), s.grad


@pytest.mark.parametrize("alpha,T,eps", [(0.5, 1.0, 0.0), (0.3, 2.0, 0.1), (1.0, 4.0, 0.0), (0.9, 0.5, 0.2)])
def test_value_and_gradient_match_reference(alpha, T, eps):
    s, t, y = batch()
    loss, nll, grad = run(s, t, y, alpha=alpha, temperature=T, epsilon=eps)
    keep = y.ne(PAD)
    s_ref = s.detach().clone().requires_grad_()
    ref = reference(s_ref, t, y, alpha, T, eps)[keep].sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, s_ref.grad)
    ref_nll = -torch.log_softmax(s, -1).gather(-1, y[:, None]).squeeze(-1)[keep].sum()
    torch.testing.assert_close(nll, ref_nll)


def test_alpha_zero_is_label_smoothing_and_teacher_unused():
    s, t, y = batch(1)
    a, _, ga = run(s, t, y, alpha=0.0, epsilon=0.1)
    b, _, gb = run(s, -t * 5, y, alpha=0.0, epsilon=0.1)
    keep = y.ne(PAD)
    s_ref = s.detach().clone().requires_grad_()
    ref = reference(s_ref, t, y, 0.0, 1.0, 0.1)[keep].sum()
    ref.backward()
    torch.testing.assert_close(a, ref.detach())
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_teacher_equal_to_student_gives_zero_kd_term(T):
    s, _, y = batch(2)
    _, _, st = distillation_terms(torch.log_softmax(s, -1), y, torch.log_softmax(s, -1), 0.5, T, ignore_index=PAD)
    assert st["kd_loss"].abs() < 1e-9
    # and the loss is then (1 - alpha) NLL
    loss, nll = distillation_loss(torch.log_softmax(s, -1), y, torch.log_softmax(s, -1), 0.5, T, ignore_index=PAD)
    torch.testing.assert_close(loss, 0.5 * nll)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_temperature_one_gradient_is_p_minus_mixed_target(alpha):
    s, t, y = batch(3)
    _, _, grad = run(s, t, y, alpha=alpha)
    p, pt = torch.softmax(s, -1), torch.softmax(t, -1)
    onehot = torch.nn.functional.one_hot(y, V).double()
    expected = (1 - alpha) * (p - onehot) + alpha * (p - pt)
    expected[y.eq(PAD)] = 0.0
    torch.testing.assert_close(grad, expected)


def test_teacher_gets_no_gradient():
    s, t, y = batch(4)
    t = t.clone().requires_grad_()
    loss, _ = distillation_loss(torch.log_softmax(s, -1), y, torch.log_softmax(t, -1), 0.5, ignore_index=PAD)
    assert not loss.requires_grad  # only the teacher required grad, and it is detached
    s = s.clone().requires_grad_()
    loss, _ = distillation_loss(torch.log_softmax(s, -1), y, torch.log_softmax(t, -1), 0.5, ignore_index=PAD)
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_padding_contributes_nothing_and_reduce_is_sum():
    s, t, y = batch(5)
    lp, tl = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    per, nll_per, st = distillation_terms(lp, y, tl, 0.4, 2.0, 0.1, ignore_index=PAD, reduce=False)
    assert per.shape == (N,) and bool((per[y.eq(PAD)] == 0).all()) and bool((nll_per[y.eq(PAD)] == 0).all())
    tot, nll, st_sum = distillation_terms(lp, y, tl, 0.4, 2.0, 0.1, ignore_index=PAD)
    torch.testing.assert_close(tot, per.sum())
    torch.testing.assert_close(nll, nll_per.sum())
    assert st_sum["ntokens"].item() == int(y.ne(PAD).sum())
    # garbage (even NaN) at padded positions does not leak into value or gradient
    s2 = s.clone()
    s2[y.eq(PAD)] = float("nan")
    s2.requires_grad_()
    loss, _ = distillation_loss(torch.log_softmax(s2, -1), y, tl, 0.4, 2.0, 0.1, ignore_index=PAD)
    loss.backward()
    torch.testing.assert_close(loss.detach(), tot)
    assert torch.isfinite(s2.grad[y.ne(PAD)]).all()


def test_statistics_teacher_nll_and_gamma():
    s, t, y = batch(6)
    lp, tl = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    _, _, st = distillation_terms(lp, y, tl, 0.5, 1.0, ignore_index=PAD, reduce=False)
    keep = y.ne(PAD)
    pt = torch.softmax(t, -1)
    off_gold = pt.sum(-1) - pt[torch.arange(N), y]
    torch.testing.assert_close(st["gamma"][keep], off_gold[keep] * V / (V - 1))
    torch.testing.assert_close(st["teacher_nll"][keep], -tl[torch.arange(N), y][keep])
    # gamma of Mueller et al.'s uniform label smoothing (1 - eps) onehot + eps / V is eps
    eps = 0.1
    ls = torch.full((N, V), eps / V, dtype=torch.float64)
    ls[torch.arange(N), y] += 1 - eps
    _, _, st = distillation_terms(lp, y, ls.log(), 0.5, ignore_index=PAD)
    assert st["gamma"].item() / st["ntokens"].item() == pytest.approx(eps)


def test_topk_equals_renormalized_truncated_teacher():
    s, t, y = batch(7)
    k = 5
    lp, tl = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    got, _ = distillation_loss(lp, y, tl, 0.7, 2.0, ignore_index=PAD, teacher_topk=k)
    # Independent: the tempered teacher with all but its top k set to zero, renormalized.
    pt = torch.softmax(t / 2.0, -1)
    thr = pt.topk(k, -1).values[:, -1:]
    pk = torch.where(pt >= thr, pt, 0.0)
    pk = pk / pk.sum(-1, keepdim=True)
    q = torch.log_softmax(s / 2.0, -1)
    kl = torch.where(pk > 0, pk * (pk.log() - q), 0.0).sum(-1)
    ref = (0.3 * -lp[torch.arange(N), y] + 0.7 * 4.0 * kl)[y.ne(PAD)].sum()
    torch.testing.assert_close(got, ref)
    full, _ = distillation_loss(lp, y, tl, 0.7, 2.0, ignore_index=PAD, teacher_topk=V)
    torch.testing.assert_close(full, distillation_loss(lp, y, tl, 0.7, 2.0, ignore_index=PAD)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    s, t, y = batch(8, dtype=torch.float32)
    lp16 = torch.log_softmax(s, -1).to(dtype).requires_grad_()
    loss, nll = distillation_loss(lp16, y, torch.log_softmax(t, -1).to(dtype), 0.5, 2.0, 0.1, ignore_index=PAD)
    assert loss.dtype == dtype and torch.isfinite(loss)
    ref, _ = distillation_loss(lp16.detach().double(), y, torch.log_softmax(t, -1).to(dtype).double(), 0.5, 2.0, 0.1,
                               ignore_index=PAD)
    assert loss.double().item() == pytest.approx(ref.item(), rel=1e-2)
    loss.backward()
    assert lp16.grad.dtype == dtype and torch.isfinite(lp16.grad).all()


def test_huge_logits_finite_and_correct():
    s, t, y = batch(9, scale=1e4, dtype=torch.float32)
    loss, _, grad = run(s, t, y, alpha=0.5, temperature=4.0)
    keep = y.ne(PAD)
    s_ref = s.double().requires_grad_()
    ref = reference(s_ref, t.double(), y, 0.5, 4.0, 0.0)[keep].sum()
    ref.backward()
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(grad.double(), s_ref.grad, rtol=0, atol=1e-4)


def test_huge_logits_half_precision_per_token():
    # per token: a sum over tokens of NLLs near 1e4 would exceed float16's range (65504) by itself
    s, t, y = batch(9, scale=3e3, dtype=torch.float32)
    lp = torch.log_softmax(s, -1).half().requires_grad_()
    loss, nll = distillation_loss(lp, y, torch.log_softmax(t, -1).half(), 0.5, 4.0, ignore_index=PAD, reduce=False)
    loss.float().sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(nll).all() and torch.isfinite(lp.grad).all()


def test_impossible_tokens_minus_inf():
    """A class both models give probability 0 (log-prob -inf) adds nothing and gets zero gradient."""
    s, t, y = batch(10, n_pad=0)
    inf = torch.full((N, 1), -math.inf, dtype=torch.float64)
    z = torch.cat([s, inf], -1).requires_grad_()
    loss, _ = distillation_loss(torch.log_softmax(z, -1), y, torch.log_softmax(torch.cat([t, inf], -1), -1), 0.5, 2.0)
    loss.backward()
    ref, _ = distillation_loss(torch.log_softmax(s, -1), y, torch.log_softmax(t, -1), 0.5, 2.0)
    torch.testing.assert_close(loss.detach(), ref)
    assert torch.isfinite(z.grad).all() and (z.grad[:, -1] == 0).all()


@pytest.mark.parametrize("kw,match", [
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"alpha": 0.5, "temperature": 0.0}, "temperature"),
    ({"alpha": 0.5, "epsilon": 1.0}, "epsilon"), ({"alpha": 0.5, "teacher_topk": 0}, "teacher_topk"),
])
def test_invalid_hyperparameters_raise(kw, match):
    s, t, y = batch()
    with pytest.raises(ValueError, match=match):
        distillation_loss(torch.log_softmax(s, -1), y, torch.log_softmax(t, -1), **kw)


def test_shape_mismatch_is_named():
    s, t, y = batch()
    with pytest.raises(ValueError, match="teacher_lprobs has shape"):
        distillation_loss(torch.log_softmax(s, -1), y, torch.log_softmax(t[:, :-1], -1), 0.5)
