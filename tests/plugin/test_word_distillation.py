"""The word_distillation criterion through fairseq's parser and registry: flags, validation, the
teacher's loading (checkpoint utilities, dictionary check), placement, no gradient, ensembles, logging."""

import math

import pytest
import torch

pytestmark = pytest.mark.slow  # builds fairseq models (tiny, untrained) and its parser

fairseq = pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

from labo_fairseq import register  # noqa: E402

register()  # the criteria
from fairseq import checkpoint_utils, models  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402

from labo_fairseq import losses  # noqa: E402
from labo_fairseq.plugin.word_distillation import WordDistillationCriterion  # noqa: E402
from labo_fairseq.study.protocol import tiny_model  # noqa: E402
from tests.helpers import write_dictionaries  # noqa: E402
from tests.plugin.test_criteria import NSYM, FixedLogitModel, build, make_sample, reduce_logs  # noqa: E402,F401

TINY_ARCH = tiny_model(8, heads=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dictionaries(tmp_path_factory.mktemp("dict"), NSYM)


def save_teacher(data_dir, path, seed=0):
    """A randomly initialised tiny transformer saved as fairseq saves checkpoints (no training)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data_dir), "--task", "translation", "-s", "de", "-t", "en",
                                                "--cpu", *TINY_ARCH])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = models.build_model(cfg.model, task)
    state = {"cfg": cfg, "model": model.state_dict(), "extra_state": {"train_iterator": {"epoch": 1}},
             "optimizer_history": [{"criterion_name": "x", "optimizer_name": "adam", "lr_scheduler_state": {},
                                    "num_updates": 0}], "last_optimizer_state": None}
    checkpoint_utils.torch_persistent_save(state, str(path))
    return model


def kd_build(data_dir, teachers, *flags):
    """A word_distillation criterion from fairseq's parser whose teachers are replaced by ``teachers``."""
    task, crit = build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(data_dir / "t0.pt"), *flags)
    crit.__dict__["_teachers"] = list(teachers)
    return task, crit


@pytest.fixture(scope="module")
def teacher_file(data_dir):
    save_teacher(data_dir, data_dir / "t0.pt", seed=0)
    save_teacher(data_dir, data_dir / "t1.pt", seed=1)
    return data_dir / "t0.pt"


def fixed_teacher(vocab, pad, seed=7):
    model, _ = make_sample(vocab, pad, seed=seed)
    return model


def test_criterion_equals_pure_function_and_logs(data_dir, teacher_file):
    task, crit = build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(teacher_file))
    pad, vocab = task.target_dictionary.pad(), len(task.target_dictionary)
    teacher = fixed_teacher(vocab, pad)
    task, crit = kd_build(data_dir, [teacher], "--kd-alpha", "0.3", "--kd-temperature", "2", "--label-smoothing", "0.1",
                          "--report-accuracy")
    model, sample = make_sample(vocab, pad)
    loss, sample_size, log = crit(model, sample)
    lp = torch.log_softmax(model.logits.detach(), -1).view(-1, vocab)
    tl = torch.log_softmax(teacher.logits.detach(), -1).view(-1, vocab)
    y = sample["target"].view(-1)
    ref, ref_nll, st = losses.distillation_terms(lp, y, tl, 0.3, 2.0, 0.1, pad)
    torch.testing.assert_close(loss.detach(), ref)
    torch.testing.assert_close(log["nll_loss"], ref_nll)
    assert sample_size == sample["ntokens"]
    out = reduce_logs(crit, [log])
    n = sample["ntokens"]
    assert out["nll_loss"] == pytest.approx(ref_nll.item() / n / math.log(2), abs=1e-3)
    assert out["kd_loss"] == pytest.approx(st["kd_loss"].item() / n / math.log(2), abs=1e-3)
    assert out["teacher_nll"] == pytest.approx(st["teacher_nll"].item() / n / math.log(2), abs=1e-3)
    assert out["gamma"] == pytest.approx(st["gamma"].item() / n, abs=1e-3)
    assert 0 < out["gamma"] < 1.05 and "accuracy" in out
    loss.backward()
    assert model.logits.grad is not None and teacher.logits.grad is None


def test_flag_defaults(data_dir, teacher_file):
    _, crit = build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(teacher_file))
    assert (crit.alpha, crit.temperature, crit.topk, crit.eps) == (0.5, 1.0, None, 0.0)
    _, crit = build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(teacher_file), "--kd-topk", "3")
    assert crit.topk == 3


def test_real_teacher_loaded_frozen_in_eval_and_not_a_parameter(data_dir, teacher_file):
    reference = save_teacher(data_dir, data_dir / "t_ref.pt", seed=0)
    _, crit = build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(data_dir / "t_ref.pt"),
                    *TINY_ARCH)
    (teacher,) = crit.teachers
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[k], v)
    # not seen by the trainer: no parameters (optimizer, DDP), nothing in the criterion's state_dict
    assert list(crit.parameters()) == [] and crit.state_dict() == {}
    crit.half()
    assert all(p.dtype == torch.float32 for p in teacher.parameters())


def test_teacher_runs_on_student_dtype_under_no_grad_and_ensemble_averages(data_dir, teacher_file):
    task, crit = build(data_dir, "--criterion", "word_distillation", "--teacher-path",
                       f"{teacher_file}:{data_dir / 't1.pt'}")
    assert len(crit.teachers) == 2
    src = torch.tensor([[4, 5, 6, 2], [7, 8, 2, 1]])
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([4, 3]),
                            "prev_output_tokens": torch.tensor([[2, 4, 5], [2, 6, 1]])}}

    class Student(torch.nn.Module):
        def __init__(self, dtype):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=dtype))

    lp = crit.teacher_lprobs(Student(torch.float64), sample)
    assert not lp.requires_grad and all(p.dtype == torch.float64 for t in crit.teachers for p in t.parameters())
    each = [t.get_normalized_probs(t(**sample["net_input"]), log_probs=True).reshape(-1, lp.size(-1))
            for t in crit.teachers]
    torch.testing.assert_close(lp.double(), torch.log((each[0].exp() + each[1].exp()) / 2).double())
    lp16 = crit.teacher_lprobs(Student(torch.bfloat16), sample)
    assert all(p.dtype == torch.bfloat16 for t in crit.teachers for p in t.parameters())
    assert torch.isfinite(lp16).all()


def test_teacher_with_other_dictionary_is_refused(data_dir, teacher_file, tmp_path):
    other = Dictionary()
    for i in range(NSYM):
        other.add_symbol(f"w{i}" if i != 3 else "zzz")
    for lang in ("de", "en"):
        other.save(str(tmp_path / f"dict.{lang}.txt"))
    save_teacher(tmp_path, tmp_path / "t.pt")
    with pytest.raises(ValueError, match=r"--teacher-path .*t\.pt: the teacher's source dictionary .* index 7: 'zzz'"):
        build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(tmp_path / "t.pt"))
    # without the teacher's data directory, the embedding sizes are compared
    bigger = Dictionary()
    for i in range(NSYM + 2):
        bigger.add_symbol(f"w{i}")
    gone = tmp_path / "gone"
    gone.mkdir()
    for lang in ("de", "en"):
        bigger.save(str(gone / f"dict.{lang}.txt"))
    save_teacher(gone, tmp_path / "t2.pt")
    for f in gone.iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="dictionary has 15 symbols, the task's 13"):
        build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(tmp_path / "t2.pt"))


@pytest.mark.parametrize("flags,message", [
    (["--kd-alpha", "1.5"], "--kd-alpha"), (["--kd-alpha", "-0.1"], "--kd-alpha"),
    (["--kd-temperature", "0"], "--kd-temperature"), (["--kd-temperature", "-2"], "--kd-temperature"),
    (["--kd-topk", "0"], "--kd-topk"), (["--label-smoothing", "1"], "--label-smoothing"),
])
def test_invalid_flags_fail_at_build(data_dir, teacher_file, flags, message):
    with pytest.raises(ValueError, match=message):
        build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(teacher_file), *flags)


def test_missing_teacher_is_named(data_dir, teacher_file):
    with pytest.raises(ValueError, match="--teacher-path: no such checkpoint file: .*nope.pt"):
        build(data_dir, "--criterion", "word_distillation", "--teacher-path", f"{teacher_file}:{data_dir / 'nope.pt'}")
    with pytest.raises(ValueError, match="--teacher-path is required"):
        build(data_dir, "--criterion", "word_distillation")


def test_topk_reaches_the_loss(data_dir, teacher_file):
    task, _ = build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(teacher_file))
    pad, vocab = task.target_dictionary.pad(), len(task.target_dictionary)
    teacher = fixed_teacher(vocab, pad)
    _, crit = kd_build(data_dir, [teacher], "--kd-topk", "2", "--kd-alpha", "1")
    model, sample = make_sample(vocab, pad)
    loss, _, _ = crit(model, sample)
    lp = torch.log_softmax(model.logits.detach(), -1).view(-1, vocab)
    tl = torch.log_softmax(teacher.logits.detach(), -1).view(-1, vocab)
    ref, _ = losses.distillation_loss(lp, sample["target"].view(-1), tl, 1.0, ignore_index=pad, teacher_topk=2)
    torch.testing.assert_close(loss.detach(), ref)
    assert isinstance(crit, WordDistillationCriterion)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the teacher follows an fp16 student onto the GPU)")
def test_teacher_follows_an_fp16_student_onto_the_gpu(data_dir, teacher_file):
    _, crit = build(data_dir, "--criterion", "word_distillation", "--teacher-path", str(teacher_file))
    student = torch.nn.Linear(1, 1).cuda().half()
    src = torch.tensor([[4, 5, 6, 2]], device="cuda")
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([4], device="cuda"),
                            "prev_output_tokens": torch.tensor([[2, 4, 5]], device="cuda")}}
    lp = crit.teacher_lprobs(student, sample)
    (teacher,) = crit.teachers
    assert all(p.is_cuda and p.dtype == torch.float16 for p in teacher.parameters())
    assert lp.is_cuda and torch.isfinite(lp).all() and not lp.requires_grad
