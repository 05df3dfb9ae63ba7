"""labo_fairseq.losses.linear against the pure losses on full fp64 logits: values, gradients for hidden,
weight and bias, padding, chunking, half precision, LABO's statistics, errors, memory, DDP."""

import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from labo_fairseq import losses
from labo_fairseq.losses.linear import default_chunk_tokens, linear_loss
from labo_fairseq.losses.workspace import WORKSPACE

N, D, V = 37, 16, 53
PAD = 1

# name -> (criterion, params); LABO at both paper-like and large tau, adaptive and fixed alpha,
# and the focal losses with the weight detached both ways
CONFIGS = {
    "ce": ("ce", {}),
    "ls": ("ls", {"epsilon": 0.1}),
    "labo": ("labo", {"tau": 1.15}),
    "labo_tau3_rho07": ("labo", {"tau": 3.0, "rho": 0.7}),
    "labo_fixed_alpha": ("labo", {"tau": 1.15, "alpha": 0.3}),
    "cp": ("cp", {"beta": 0.4}),
    "fl": ("fl", {"gamma": 2.0}),
    "fl_detached": ("fl", {"gamma": 2.0, "detach_weight": True}),
    "afl": ("afl", {"gamma": 1.0, "alpha": 0.5}),
    "afl_differentiated": ("afl", {"gamma": 2.0, "alpha": 1.0, "detach_weight": False}),
}
PURE = {
    "ce": lambda lp, y, ignore_index: losses.label_smoothing_loss(lp, y, 0.0, ignore_index=ignore_index),
    "ls": losses.label_smoothing_loss,
    "labo": losses.labo_loss,
    "cp": losses.confidence_penalty_loss,
    "fl": losses.focal_loss,
    "afl": losses.anti_focal_loss,
}


def make(n=N, d=D, v=V, dtype=torch.float32, bias=True, pad=PAD, n_pad=6, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, n, d, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(v, d, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.5).to(dtype) if bias else None
    target = torch.randint(2, v, (*lead, n), generator=g)
    if pad is not None:
        target.view(-1)[torch.randperm(target.numel(), generator=g)[:n_pad]] = pad
    return hidden, weight, b, target


def leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def reference(hidden, weight, bias, target, name, ignore_index, nll_weight=0.0):
    """fp64: the pure loss on log_softmax of the fp64 matmul, and autograd gradients of
    ``loss + nll_weight * nll`` (nll = -log p_y written out: LABO's and CP's pure nll carry no gradient)."""
    h, w, b = leaves(*(None if t is None else t.double() for t in (hidden, weight, bias)))
    logits = h @ w.t() + (0 if b is None else b)
    lp = torch.log_softmax(logits, -1).reshape(-1, w.size(0))
    y = target.reshape(-1)
    crit, params = CONFIGS[name]
    loss, _ = PURE[crit](lp, y, ignore_index=ignore_index, **params)
    keep = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y.ne(ignore_index)
    nll = -torch.where(keep, lp.gather(-1, y.clamp(0, w.size(0) - 1)[:, None]).squeeze(-1), 0.0).sum()
    (loss + nll_weight * nll).backward()
    return loss.detach(), nll.detach(), [None if t is None else t.grad for t in (h, w, b)]


def fused(hidden, weight, bias, target, name, ignore_index, chunk, nll_weight=0.0):
    h, w, b = leaves(hidden, weight, bias)
    crit, params = CONFIGS[name]
    loss, nll = linear_loss(h, w, target, crit, bias=b, chunk_tokens=chunk, ignore_index=ignore_index, **params)
    (loss + nll_weight * nll).backward()
    return loss.detach(), nll.detach(), [None if t is None else t.grad for t in (h, w, b)]


def assert_matches(got, ref, rtol, atol_rel):
    """Values and gradients: |got - ref| <= atol_rel * max|ref| + rtol * |ref| (per tensor)."""
    (loss, nll, grads), (r_loss, r_nll, r_grads) = got, ref
    for a, r in [(loss, r_loss), (nll, r_nll), *zip(grads, r_grads)]:
        if r is None:
            assert a is None
            continue
        torch.testing.assert_close(a.double(), r, rtol=rtol, atol=atol_rel * float(r.abs().max()))


@pytest.mark.parametrize("chunk", [1, 5, 16, N, 100, None])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_values_and_gradients_match_fp64_reference(name, chunk):
    hidden, weight, bias, target = make()
    got = fused(hidden, weight, bias, target, name, PAD, chunk)
    ref = reference(hidden, weight, bias, target, name, PAD)
    assert got[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in got[2])
    assert_matches(got, ref, rtol=1e-5, atol_rel=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_bias_pad_outside_vocabulary_and_leading_dims(name):
    # ignore_index=-100 lies outside [0, V) (Hugging Face's convention); hidden (2, 19, d)
    hidden, weight, _, target = make(n=19, bias=False, pad=-100, lead=(2,))
    got = fused(hidden, weight, None, target, name, -100, 7)
    assert got[2][0].shape == hidden.shape
    assert_matches(got, reference(hidden, weight, None, target, name, -100), rtol=1e-5, atol_rel=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_without_ignore_index_every_token_counts(name):
    hidden, weight, bias, target = make(pad=None)
    got = fused(hidden, weight, bias, target, name, None, 8)
    assert_matches(got, reference(hidden, weight, bias, target, name, None), rtol=1e-5, atol_rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_half_precision_inputs(name, dtype):
    hidden, weight, bias, target = make(dtype=dtype)
    got = fused(hidden, weight, bias, target, name, PAD, 5)
    assert got[0].dtype == dtype and got[1].dtype == dtype and all(g.dtype == dtype for g in got[2])
    # the reference sees the same (rounded) inputs in fp64: what is left is the output rounding
    assert_matches(got, reference(hidden, weight, bias, target, name, PAD), rtol=1e-2, atol_rel=1e-2)


@pytest.mark.parametrize("name", ["ls", "labo", "fl"])
@pytest.mark.parametrize("waiting", [1, 3, 100])
def test_bf16_rows_wait_for_the_gemms(monkeypatch, name, waiting):
    # a bf16 weight's chunks leave dz in bf16 rows that grad_hidden's and grad_weight's GEMMs take
    # `waiting` chunks at a time (one, three with a short last flush, all): the GEMMs see exactly
    # those rows, and the result stays within the output rounding
    from labo_fairseq.losses import linear

    chunk = 5
    monkeypatch.setattr(linear, "PENDING_BYTES", 2 * chunk * V * waiting)
    seen = []
    add = linear._GradWeight.add_
    monkeypatch.setattr(linear._GradWeight, "add_", lambda self, dz, *a: (seen.append((dz.dtype, dz.size(0))),
                                                                         add(self, dz, *a)))
    hidden, weight, bias, target = make(dtype=torch.bfloat16)
    got = fused(hidden, weight, bias, target, name, PAD, chunk)
    kept = int(target.ne(PAD).sum())
    rows = [min(chunk * waiting, kept - i) for i in range(0, kept, chunk * waiting)]
    assert seen == [(torch.bfloat16, r) for r in rows] * 2  # the loss's sweep and nll's (fused() reaches both)
    assert all(g.dtype == torch.bfloat16 for g in got[2])
    assert_matches(got, reference(hidden, weight, bias, target, name, PAD), rtol=1e-2, atol_rel=1e-2)


def test_fp32_and_fp16_chunks_take_their_gemms_at_once(monkeypatch):
    # no waiting rows outside bf16: every chunk's dz goes into grad_weight in the working dtype
    from labo_fairseq.losses import linear

    seen = []
    add = linear._GradWeight.add_
    monkeypatch.setattr(linear._GradWeight, "add_", lambda self, dz, *a: (seen.append(dz.dtype), add(self, dz, *a)))
    for dtype in (torch.float32, torch.float16):
        hidden, weight, bias, target = make(dtype=dtype)
        fused(hidden, weight, bias, target, "labo", PAD, 5)
    assert seen == [torch.float32] * (2 * 2 * -(-int(target.ne(PAD).sum()) // 5))  # 2 dtypes x loss and nll


@pytest.mark.parametrize("name", ["ce", "labo"])
def test_fp16_keeps_rare_tokens_gradient_in_large_chunks(name):
    # tokens of probability ~1e-9 (a bias of -20): their rows of grad_weight are sums of entries of
    # dz below fp16's range, which a loss scale (here 1024) brings back only if dz was not cast first
    chunk = 512
    hidden, weight, bias, target = make(n=chunk + 37, n_pad=20, dtype=torch.float16)
    rare = torch.arange(V // 2, V)
    bias[rare] = -20.0
    target[target >= V // 2] = 2  # no rare token is a target
    h, w, b = leaves(hidden, weight, bias)
    crit, params = CONFIGS[name]
    loss, _ = linear_loss(h, w, target, crit, bias=b, chunk_tokens=chunk, ignore_index=PAD, **params)
    (loss * 1024).backward()
    ref = reference(hidden, weight, bias, target, name, PAD)[2][1][rare] * 1024
    got = w.grad[rare].double()
    assert ref.abs().min() > 0 and (got - ref).norm() / ref.norm() < 1e-2


@pytest.mark.parametrize("name", ["labo", "ls"])
def test_autocast_region_does_not_downcast(name):
    # Hugging Face's Trainer runs the model under autocast: the GEMMs inside must stay fp32
    hidden, weight, bias, target = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused(hidden, weight, bias, target, name, PAD, 5)
    assert_matches(got, reference(hidden, weight, bias, target, name, PAD), rtol=1e-5, atol_rel=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nll_output_carries_its_gradient(name):
    hidden, weight, bias, target = make()
    got = fused(hidden, weight, bias, target, name, PAD, 6, nll_weight=0.5)
    assert_matches(got, reference(hidden, weight, bias, target, name, PAD, nll_weight=0.5), rtol=1e-5, atol_rel=1e-5)


def test_nll_alone_is_the_cross_entropy_gradient():
    hidden, weight, bias, target = make()
    h, w, b = leaves(hidden, weight, bias)
    _, nll = linear_loss(h, w, target, "labo", bias=b, chunk_tokens=4, ignore_index=PAD, tau=1.15)
    nll.backward()
    ref = reference(hidden, weight, bias, target, "ce", PAD)
    for g, r in zip((h.grad, w.grad, b.grad), ref[2]):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-6)


def test_grad_output_scales_and_frozen_inputs_get_none():
    hidden, weight, bias, target = make()
    h, w = leaves(hidden, weight)
    loss, _ = linear_loss(h, w, target, "ls", bias=bias, chunk_tokens=5, ignore_index=PAD, epsilon=0.1)
    (3.0 * loss).backward()
    ref = reference(hidden, weight, bias, target, "ls", PAD)
    torch.testing.assert_close(h.grad.double(), 3.0 * ref[2][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), 3.0 * ref[2][1], rtol=1e-5, atol=1e-6)
    assert not bias.requires_grad


def test_second_backward_is_an_error():
    hidden, weight, _, target = make()
    h, w = leaves(hidden, weight)
    loss, _ = linear_loss(h, w, target, "labo", tau=1.15)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="can run only once"):
        loss.backward()


@pytest.mark.parametrize("name", ["labo", "labo_fixed_alpha", "ls"])
def test_no_grad_path_gives_the_same_values(name):
    hidden, weight, bias, target = make()
    crit, params = CONFIGS[name]
    with torch.no_grad():
        loss, nll, stats = linear_loss(hidden, weight, target, crit, bias=bias, chunk_tokens=5, ignore_index=PAD,
                                       return_stats=True, **params)
    ref = reference(hidden, weight, bias, target, name, PAD)
    torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nll.double(), ref[1], rtol=1e-5, atol=1e-6)
    assert float(stats["ntokens"]) == int(target.ne(PAD).sum())


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_labo_stats_equal_labo_terms(alpha):
    hidden, weight, bias, target = make()
    h, w = leaves(hidden, weight)
    *_, stats = linear_loss(h, w, target, "labo", bias=bias, chunk_tokens=6, ignore_index=PAD, return_stats=True,
                            tau=1.15, rho=0.5, alpha=alpha)
    lp = torch.log_softmax(hidden @ weight.t() + bias, -1)
    *_, ref = losses.labo_terms(lp, target, 1.15, 0.5, alpha, ignore_index=PAD)
    assert set(stats) == {"alpha", "target_entropy", "ntokens"}
    for k in ref:
        torch.testing.assert_close(stats[k], ref[k], rtol=1e-5, atol=1e-5)
    assert not any(v.requires_grad for v in stats.values())


def test_other_criteria_report_ntokens_only():
    hidden, weight, bias, target = make()
    *_, stats = linear_loss(hidden, weight, target, "fl", bias=bias, ignore_index=PAD, return_stats=True, gamma=1.0)
    assert set(stats) == {"ntokens"} and float(stats["ntokens"]) == N - 6


def test_empty_batch_is_zero():
    hidden, weight, _, target = make(n=0, n_pad=0)
    h, w = leaves(hidden, weight)
    loss, nll = linear_loss(h, w, target, "labo", tau=1.15)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(nll.detach()) == 0.0 and float(w.grad.abs().sum()) == 0.0


def test_default_chunk_rule():
    # one fp32 (chunk x V) buffer at most ~128 MiB, a multiple of 8, within [1, N], the tokens
    # shared evenly: 4096 at V = 10k is 2 x 2048, not 3352 + 744
    assert default_chunk_tokens(4096, 256000) == 128
    assert default_chunk_tokens(4096, 40000) == 824  # 5 chunks (832 would be the most)
    assert default_chunk_tokens(4096, 10000) == 2048
    assert default_chunk_tokens(100, 10000) == 100
    assert default_chunk_tokens(4096, 10**8) == 1
    assert default_chunk_tokens(0, 50) == 1
    # a bf16 weight: fp32 buffers of half that size (its dz waits in bf16 rows beside them)
    assert default_chunk_tokens(4096, 256000, bf16=True) == 64
    assert default_chunk_tokens(4096, 10000, bf16=True) == 1368  # 3 chunks
    for n, v in [(4096, 128000), (50000, 10000), (4096, 3_000_000), (3891, 40000), (8193, 10000)]:
        c = default_chunk_tokens(n, v)
        most = 128 * 2**20 // (4 * v)
        assert 1 <= c <= n and c * v * 4 <= 128 * 2**20 and (c % 8 == 0 or c < 8)
        chunks = -(-n // c)
        assert chunks == -(-n // max(1, most - most % 8)) and n - (chunks - 1) * c > c - 8 * chunks


@pytest.mark.parametrize("call, match", [
    ({"criterion": "labo_ls"}, r"unknown criterion 'labo_ls'; choose one of: ce, ls, labo, cp, fl, afl"),
    ({"criterion": "labo"}, r"criterion 'labo' needs the parameter 'tau'"),
    ({"criterion": "ls", "epsilon": 0.1, "beta": 1.0}, r"criterion 'ls' has no parameter 'beta' \(it takes: epsilon\)"),
    ({"criterion": "ce", "epsilon": 0.1}, r"criterion 'ce' has no parameter 'epsilon' \(it takes: none\)"),
    ({"criterion": "labo", "tau": 0.0}, r"tau must be in \(0(\.0)?, inf\), got 0.0"),
    ({"criterion": "labo", "tau": 1.0, "rho": 1.5}, r"rho must be in \[0(\.0)?, 1(\.0)?\], got 1.5"),
    ({"criterion": "ls", "epsilon": -0.1}, r"epsilon must be in \[0(\.0)?, 1(\.0)?[\])], got -0.1"),
    ({"criterion": "afl", "gamma": 1.0, "alpha": -1.0}, r"alpha must be in \[0(\.0)?, inf\), got -1.0"),
    ({"criterion": "ls", "epsilon": 0.1, "chunk_tokens": 0}, r"chunk_tokens must be >= 1, got 0"),
    ({"criterion": "ls", "epsilon": 0.1, "weight": torch.zeros(V, D + 1)},
     r"weight must be \(V, d\) with d = hidden's last dimension; got weight \(53, 17\), hidden \(37, 16\)"),
    ({"criterion": "ls", "epsilon": 0.1, "bias": torch.zeros(V - 1)}, r"bias must have shape \(53,\) .* got \(52,\)"),
    ({"criterion": "ls", "epsilon": 0.1, "target": torch.zeros(N - 1, dtype=torch.long)},
     r"target has 36 elements, hidden \(37, 16\) has 37 tokens"),
])
def test_bad_input_raises_value_error(call, match):
    hidden, weight, _, target = make()
    kw = {"hidden": hidden, "weight": weight, "target": target, **call}
    with pytest.raises(ValueError, match=match) as info:
        linear_loss(**kw)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- memory


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created by aten ops under this mode and still alive (weakly
    tracked), over all ops run in it, forward and backward. Inputs made before it do not count."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                st = t.untyped_storage()
                self.live.setdefault(st.data_ptr(), (StorageWeakRef(st), st.nbytes()))
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self.live.values()))
        return out


@pytest.mark.parametrize("name", ["labo", "ls", "cp", "fl"])
def test_peak_memory_is_a_few_chunk_buffers(name):

    n, d, v, chunk = 512, 16, 4000, 16
    hidden, weight, bias, target = make(n=n, d=d, v=v)
    crit, params = CONFIGS[name]
    full, chunk_buf = n * v * 4, chunk * v * 4
    fixed = (v * d + 3 * n * d + v) * 4  # the fp32 gradient accumulators, the kept tokens' copy and gradient
    h, w, b = leaves(hidden, weight, bias)
    WORKSPACE.storage = None  # the chunk buffers' workspace is counted too
    with PeakLiveBytes() as fused_mem:
        loss, _ = linear_loss(h, w, target, crit, bias=b, chunk_tokens=chunk, ignore_index=PAD, **params)
        loss.backward()
    h, w, b = leaves(hidden, weight, bias)
    with PeakLiveBytes() as unfused_mem:
        lp = torch.log_softmax(h @ w.t() + b, -1)
        PURE[crit](lp, target, ignore_index=PAD, **params)[0].backward()
        del lp
    assert unfused_mem.peak >= 2 * full  # the probe sees (N x V) buffers: logits and log-probs at least
    assert fused_mem.peak <= 2 * fixed + 6 * chunk_buf, (fused_mem.peak, chunk_buf)
    assert fused_mem.peak < full / 4


# -------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world, init_file, out_dir, name):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        model = _Head(*make(dtype=torch.float64)[:3])
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        hidden, _, _, target = make(dtype=torch.float64)
        part = slice(rank * N // world, (rank + 1) * N // world)
        loss = ddp(hidden[part], target[part], name)
        (loss * world).backward()  # DDP averages gradients over ranks: the sum over the global batch
        if rank == 0:
            torch.save({k: p.grad for k, p in model.named_parameters()}, os.path.join(out_dir, "grads.pt"))
    finally:
        dist.destroy_process_group()


class _Head(torch.nn.Module):
    """A projection of the hidden states (so hidden's gradient path is exercised) and the output layer."""

    def __init__(self, hidden, weight, bias):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.eye(hidden.size(-1), dtype=hidden.dtype) + 0.1)
        self.weight = torch.nn.Parameter(weight.clone())
        self.bias = torch.nn.Parameter(bias.clone())

    def forward(self, hidden, target, name):
        crit, params = CONFIGS[name]
        loss, _ = linear_loss(hidden @ self.proj, self.weight, target, crit, bias=self.bias, chunk_tokens=7,
                              ignore_index=PAD, **params)
        return loss


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ls", "labo"])
def test_ddp_two_processes_match_one_process(name):
    hidden, weight, bias, target = make(dtype=torch.float64)
    model = _Head(hidden, weight, bias)
    model(hidden, target, name).backward()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp, name), nprocs=2,
                                 join=False, start_method="spawn")
        try:
            for _ in range(120):  # at most ~2 minutes, then the workers are ended
                if ctx.join(timeout=1):
                    break
            else:
                pytest.fail("DDP workers did not finish in 120 s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
        grads = torch.load(os.path.join(tmp, "grads.pt"))
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ls", "labo", "fl"])
def test_ignored_tokens_are_never_computed(name):
    # their rows are dropped before the GEMMs: NaN hidden states there change nothing, and their
    # gradient is exactly zero
    hidden, weight, bias, target = make()
    ref = fused(hidden, weight, bias, target, name, PAD, 5)
    hidden[target.eq(PAD)] = float("nan")
    got = fused(hidden, weight, bias, target, name, PAD, 5)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert torch.equal(got[2][0], ref[2][0]) and float(got[2][0][target.eq(PAD)].abs().sum()) == 0.0


def same(got, ref):
    return all(torch.equal(a, b) for a, b in [(got[0], ref[0]), (got[1], ref[1]), *zip(got[2], ref[2])])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_weight_in_row_blocks(monkeypatch, dtype):
    # grad_weight accumulates in blocks of rows of about CHUNK_BYTES (half of it for a half-precision
    # weight, whose gradient is converted block by block): with blocks of 10 rows (fp32: 6 blocks,
    # the last short) or 5 (bf16: 11 blocks) nothing changes
    from labo_fairseq.losses import linear

    monkeypatch.setattr(linear, "CHUNK_BYTES", 10 * D * 4)
    hidden, weight, bias, target = make(dtype=dtype)
    got = fused(hidden, weight, bias, target, "labo", PAD, 7)
    assert len(linear._GradWeight(weight, dtype).blocks) == (6 if dtype == torch.float32 else 11)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert got[2][1].dtype == dtype
    assert_matches(got, reference(hidden, weight, bias, target, "labo", PAD), rtol=tol, atol_rel=tol)
