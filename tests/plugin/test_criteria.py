"""The registered criteria through fairseq: CLI flags, validation, logging, warm-up by updates.

A fixed-logit fake model (like fairseq's tests/test_label_smoothing.py) feeds the criteria, which are
built by fairseq's own argument parser and criterion registry.
"""

import math

import pytest
import torch

fairseq = pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

from labo_fairseq import register  # noqa: E402

register()  # criteria, fixes, checkpoint allow-list

pytestmark = pytest.mark.slow  # builds fairseq tasks and models
from fairseq import options, tasks  # noqa: E402
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.logging import metrics  # noqa: E402

from labo_fairseq import losses  # noqa: E402
from labo_fairseq.plugin.criteria import follow_trainer_updates  # noqa: E402
from tests.helpers import write_dictionaries  # noqa: E402

BSZ, TGT_LEN, NSYM = 3, 5, 9


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dictionaries(tmp_path_factory.mktemp("dict"), NSYM)


def build(data_dir, *flags):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        [str(data_dir), "--user-dir", "labo_fairseq", "--task", "translation", "-s", "de", "-t", "en",
         "--arch", "transformer", "--cpu", *flags],
    )
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task, task.build_criterion(cfg.criterion)


class FixedLogitModel(torch.nn.Module):
    """Returns the same logits whatever the input; fairseq's model API for criteria."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, src_tokens=None, src_lengths=None, prev_output_tokens=None):
        return self.logits, None

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return torch.log_softmax(net_output[0].float(), -1) if log_probs else torch.softmax(net_output[0].float(), -1)

    def get_targets(self, sample, net_output):
        return sample["target"]


def make_sample(vocab_size, pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(pad + 3, vocab_size, (BSZ, TGT_LEN), generator=g)
    target[0, -2:] = pad
    target[2, -1:] = pad
    logits = torch.randn(BSZ, TGT_LEN, vocab_size, generator=g, dtype=torch.float64).float() * 2
    sample = {
        "net_input": {"src_tokens": None, "src_lengths": None, "prev_output_tokens": None},
        "target": target,
        "ntokens": int(target.ne(pad).sum()),
        "nsentences": BSZ,
    }
    return FixedLogitModel(logits), sample


def reduce_logs(crit, logs):
    with metrics.aggregate() as agg:
        crit.__class__.reduce_metrics(logs)
    return agg.get_smoothed_values()


# --------------------------------------------------------------------------- equivalences


CASES = {
    "label_smoothed_labo": (
        ["--labo-warmup-updates", "0", "--labo-tau", "1.25"],
        lambda lp, y, pad: losses.labo_loss(lp, y, 1.25, ignore_index=pad),
    ),
    "confidence_penalty": (
        ["--cp-beta", "0.3"],
        lambda lp, y, pad: losses.confidence_penalty_loss(lp, y, 0.3, ignore_index=pad),
    ),
    "focal_loss": (
        ["--focal-gamma", "2"],
        lambda lp, y, pad: losses.focal_loss(lp, y, 2.0, ignore_index=pad),
    ),
    "anti_focal_loss": (
        ["--anti-focal-gamma", "1", "--anti-focal-alpha", "0.5"],
        lambda lp, y, pad: losses.anti_focal_loss(lp, y, 1.0, 0.5, ignore_index=pad),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_criterion_equals_pure_function_and_logs_nll(data_dir, name):
    flags, pure = CASES[name]
    task, crit = build(data_dir, "--criterion", name, "--report-accuracy", *flags)
    pad = task.target_dictionary.pad()
    model, sample = make_sample(len(task.target_dictionary), pad)
    loss, sample_size, log = crit(model, sample)
    lp = torch.log_softmax(model.logits.detach(), -1).view(-1, model.logits.size(-1))
    ref_loss, ref_nll = pure(lp, sample["target"].view(-1), pad)
    torch.testing.assert_close(loss.detach(), ref_loss)
    torch.testing.assert_close(log["nll_loss"], ref_nll)
    assert sample_size == sample["ntokens"]
    assert log["total"] == sample["ntokens"]
    out = reduce_logs(crit, [log])
    # nll_loss is the plain NLL in bits per token, ppl = 2 ** nll_loss, as fairseq's LS logs them.
    assert out["nll_loss"] == pytest.approx(ref_nll.item() / sample["ntokens"] / math.log(2), abs=1e-3)
    assert out["ppl"] == pytest.approx(2 ** out["nll_loss"], rel=1e-2)
    assert "accuracy" in out
    loss.backward()
    assert torch.isfinite(model.logits.grad).all()


def test_labo_warmup_is_fairseq_label_smoothing(data_dir):
    task, crit = build(data_dir, "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "10",
                       "--label-smoothing", "0.2")
    pad = task.target_dictionary.pad()
    model, sample = make_sample(len(task.target_dictionary), pad)
    loss, _, log = crit(model, sample)
    lp = torch.log_softmax(model.logits.detach(), -1).view(-1, model.logits.size(-1))
    ref_loss, ref_nll = label_smoothed_nll_loss(lp, sample["target"].view(-1), 0.2, ignore_index=pad)
    torch.testing.assert_close(loss.detach(), ref_loss)
    out = reduce_logs(crit, [log])
    assert out["labo_alpha"] == pytest.approx(0.2) and out["labo_active"] == 0


def test_labo_logs_alpha_and_target_entropy(data_dir):
    task, crit = build(data_dir, "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "0")
    pad = task.target_dictionary.pad()
    model, sample = make_sample(len(task.target_dictionary), pad)
    _, _, log = crit(model, sample)
    out = reduce_logs(crit, [log])
    # Independent: alpha from Eq. 16 and the entropy of the explicit P_hat, averaged over real tokens.
    lp = torch.log_softmax(model.logits.detach().double(), -1).view(-1, model.logits.size(-1))
    y = sample["target"].view(-1)
    keep = y.ne(pad)
    vocab = lp.size(-1)
    alpha = (math.log(vocab) - 0.5 * -(lp.exp() * lp).sum(-1)) / math.log(vocab)
    phat = alpha[:, None] * torch.softmax(lp / 1.15, -1)
    phat[torch.arange(len(y)), y] += 1 - alpha
    ent = -(phat * phat.log()).sum(-1)
    assert out["labo_alpha"] == pytest.approx(alpha[keep].mean().item(), abs=1e-3)
    assert out["labo_target_ent"] == pytest.approx(ent[keep].mean().item() / math.log(2), abs=1e-3)
    assert out["labo_active"] == 1


def test_sentence_avg_and_ignore_prefix(data_dir):
    task, crit = build(data_dir, "--criterion", "focal_loss", "--sentence-avg", "--ignore-prefix-size", "1")
    pad = task.target_dictionary.pad()
    model, sample = make_sample(len(task.target_dictionary), pad)
    loss, sample_size, _ = crit(model, sample)
    assert sample_size == BSZ
    lp = torch.log_softmax(model.logits.detach(), -1)[:, 1:].reshape(-1, model.logits.size(-1))
    ref, _ = losses.focal_loss(lp, sample["target"][:, 1:].reshape(-1), 1.0, ignore_index=pad)
    torch.testing.assert_close(loss.detach(), ref)


def test_flag_defaults(data_dir):
    _, crit = build(data_dir, "--criterion", "label_smoothed_labo")
    assert (crit.tau, crit.rho, crit.alpha, crit.eps, crit.warmup_updates) == (1.15, 0.5, None, 0.1, 5000)
    _, afl = build(data_dir, "--criterion", "anti_focal_loss")
    assert (afl.gamma, afl.alpha, afl.detach_weight) == (1.0, 0.5, True)
    _, fl = build(data_dir, "--criterion", "focal_loss")
    assert fl.detach_weight is False


def test_labo_flags_do_not_clash_with_lr_warmup(data_dir):
    _, crit = build(data_dir, "--criterion", "label_smoothed_labo", "--lr-scheduler", "inverse_sqrt",
                    "--warmup-updates", "4000", "--labo-warmup-updates", "7")
    assert crit.warmup_updates == 7


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--criterion", "label_smoothed_labo", "--labo-tau", "0"], "--labo-tau"),
        (["--criterion", "label_smoothed_labo", "--labo-tau", "-1.5"], "--labo-tau"),
        (["--criterion", "label_smoothed_labo", "--labo-rho", "1.2"], "--labo-rho"),
        (["--criterion", "label_smoothed_labo", "--labo-alpha", "1.5"], "--labo-alpha"),
        (["--criterion", "label_smoothed_labo", "--labo-warmup-updates", "-1"], "--labo-warmup-updates"),
        (["--criterion", "label_smoothed_labo", "--label-smoothing", "1.0"], "--label-smoothing"),
        (["--criterion", "confidence_penalty", "--cp-beta", "-0.1"], "--cp-beta"),
        (["--criterion", "focal_loss", "--focal-gamma", "-1"], "--focal-gamma"),
        (["--criterion", "anti_focal_loss", "--anti-focal-gamma", "-1"], "--anti-focal-gamma"),
        (["--criterion", "anti_focal_loss", "--anti-focal-alpha", "-1"], "--anti-focal-alpha"),
    ],
)
def test_invalid_flags_fail_at_build(data_dir, flags, message):
    with pytest.raises(ValueError, match=message):
        build(data_dir, *flags)


# ------------------------------------------------------------------------ warm-up counting


class RecordingTask:
    """Stands in for a fairseq task: records what the criterion saw in each train_step."""

    def __init__(self):
        self.seen = []

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self.seen.append((update_num, criterion.labo_active))
        return None, 0, {}


def test_warmup_follows_trainer_update_num_not_forward_calls(data_dir):
    """Gradient accumulation (several train_steps per update) and validation (no train_step)
    do not shift the switch; a resumed trainer starts at its restored count."""
    task, crit = build(data_dir, "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "3")
    recorder = RecordingTask()
    follow_trainer_updates(recorder)
    follow_trainer_updates(recorder)  # idempotent
    pad = task.target_dictionary.pad()
    model, sample = make_sample(len(task.target_dictionary), pad)
    for update_num in range(5):
        for _ in range(2):  # --update-freq 2
            recorder.train_step(sample=sample, model=model, criterion=crit, optimizer=None, update_num=update_num)
        crit(model, sample)  # a validation forward in between
    assert recorder.seen == [(u, u >= 3) for u in range(5) for _ in range(2)]
    # Resume at update 2 (fresh criterion, as after a restart): still warming up, then LABO at 3.
    _, resumed = build(data_dir, "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "3")
    recorder.seen.clear()
    for update_num in (2, 3):
        recorder.train_step(sample, model, resumed, None, update_num)
    assert recorder.seen == [(2, False), (3, True)]


def test_real_task_train_step_passes_update_num(data_dir):
    task, crit = build(data_dir, "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "4")
    pad = task.target_dictionary.pad()
    model, sample = make_sample(len(task.target_dictionary), pad)
    model.set_num_updates = lambda n: None  # fairseq models have it

    class Opt:
        def backward(self, loss):
            loss.backward()

    task.train_step(sample, model, crit, Opt(), update_num=6)
    assert crit.num_updates == 6 and crit.labo_active
