"""configs/ and the train command: every dataset x method builds a fairseq-train command that
fairseq's own parser accepts, with a registered criterion whose flags pass its checks."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

from labo_fairseq import register

register()  # criteria, fixes, checkpoint allow-list
from fairseq import options  # noqa: E402
from fairseq.criterions import CRITERION_REGISTRY  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

from labo_fairseq.study.protocol import RUN_MARKER, names  # noqa: E402
from labo_fairseq.study.train import train_command  # noqa: E402

DATASETS = ["iwslt14_de_en", "iwslt14_en_de", "iwslt14_en_fr", "iwslt14_fr_en", "iwslt17_multi",
            "wmt14_en_de", "wmt14_de_en", "multi30k_de_en", "multi30k_de_en_iwslt",
            "multi30k_de_en_small", "multi30k_de_en_converged"]  # the last four: not the paper's
PILOTS = ["multi30k_de_en_small_pilot"]  # multi30k_de_en_small with another --max-epoch
METHODS = ["afl", "ce", "cp", "fl", "labo", "ls"]
ABLATIONS = ["labo_fixed_alpha", "labo_no_warmup", "labo_rho1", "labo_short_warmup"]  # of LABO, base: labo


def test_every_dataset_and_method_has_a_config():
    assert names("datasets") == sorted(DATASETS + PILOTS) and names("methods") == sorted(METHODS + ABLATIONS + ["kd"])


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("method,changed", [
    ("labo_fixed_alpha", {"--labo-alpha": "0.1"}), ("labo_rho1", {"--labo-rho": "1.0"}),
    ("labo_no_warmup", {"--labo-warmup-updates": "0"}), ("labo_short_warmup", {"--labo-warmup-updates": "180"})])
def test_an_ablation_is_labo_with_one_thing_changed(method, changed, tmp_path):
    labo = train_command("multi30k_de_en_small", "labo", 1, runs_root=tmp_path).train_argv
    ab = train_command("multi30k_de_en_small", method, 1, runs_root=tmp_path).train_argv
    assert flag(labo, "--labo-warmup-updates") == "570" and flag(labo, "--labo-alpha") is None
    for name, value in changed.items():
        assert flag(ab, name) == value != flag(labo, name)
    strip = {"--save-dir", *changed}
    assert [t for i, t in enumerate(ab) if t not in strip and (i == 0 or ab[i - 1] not in strip)] == \
           [t for i, t in enumerate(labo) if t not in strip and (i == 0 or labo[i - 1] not in strip)]
    assert ab[ab.index("--save-dir") + 1] == str(tmp_path / "multi30k_de_en_small" / method / "seed1" / "checkpoints")


def test_the_short_warmup_needs_the_datasets_reading_of_it():
    with pytest.raises(ValueError, match="dataset iwslt14_de_en has no labo_warmup_updates_short, which method "
                                         "labo_short_warmup needs"):
        train_command("iwslt14_de_en", "labo_short_warmup", 1)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method,tau", [(m, None) for m in METHODS] + [("labo", 1.25)])
@pytest.mark.slow
def test_config_parses_with_fairseq_and_builds_its_criterion(dataset, method, tau, tmp_path):
    launch = train_command(dataset, method, 1, tau=tau, gpus=2, runs_root=tmp_path)
    argv, run = launch.train_argv, launch.run_dir
    assert argv[0] == "fairseq-train" and launch.processes == [[launch.processes[0][0], *argv[1:]]]
    args = options.parse_args_and_arch(options.get_training_parser(), argv[1:])  # SystemExit on a bad flag
    assert args.criterion in CRITERION_REGISTRY
    cfg = convert_namespace_to_omegaconf(args)
    criterion = CRITERION_REGISTRY[args.criterion].build_criterion(cfg.criterion, None)
    assert args.max_tokens == 4096 and args.seed == 1 and args.fp16 and args.distributed_world_size == 2
    assert args.save_dir == str(run / "checkpoints")
    if method == "labo":
        assert criterion.tau == (tau or 1.15)
        expected = {"multi30k_de_en": 200, "multi30k_de_en_iwslt": 160, "multi30k_de_en_small": 570,
                    "multi30k_de_en_converged": 570}
        assert criterion.warmup_updates == expected.get(dataset, 10000 if dataset.startswith("wmt") else 5000)
    # the validation BLEU that chooses the checkpoint is the test BLEU: on the prepared tokens
    if getattr(args, "eval_bleu", False):
        assert args.eval_tokenized_bleu and args.eval_bleu_detok == "space" and args.eval_bleu_remove_bpe
    if dataset.startswith(("iwslt14", "wmt")) or dataset in ("multi30k_de_en_iwslt", "multi30k_de_en_small"):
        assert args.eval_bleu and args.best_checkpoint_metric == "bleu"
    if dataset.startswith(("iwslt14", "wmt")):
        src, tgt = dataset.split("_")[1:]
        assert (args.source_lang, args.target_lang) == (src, tgt)


@pytest.mark.parametrize("method", ABLATIONS)
@pytest.mark.slow
def test_an_ablation_builds_labos_criterion_with_its_change(method):
    argv = train_command("multi30k_de_en_small", method, 1).train_argv
    args = options.parse_args_and_arch(options.get_training_parser(), argv[1:])
    c = CRITERION_REGISTRY[args.criterion].build_criterion(convert_namespace_to_omegaconf(args).criterion, None)
    got = (c.alpha, c.rho, c.warmup_updates, c.tau)
    assert got == {"labo_fixed_alpha": (0.1, 0.5, 570, 1.15), "labo_rho1": (None, 1.0, 570, 1.15),
                   "labo_no_warmup": (None, 0.5, 0, 1.15), "labo_short_warmup": (None, 0.5, 180, 1.15)}[method]


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "labo_fairseq", "train", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_dry_run_prints_the_command_and_writes_nothing(tmp_path):
    """Run from a directory outside the checkout: data, checkpoints and logs all lie under it."""
    proc = run("wmt14_en_de", "labo", 3, "--dry-run", "--", "--max-update", "7", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    comment, line = proc.stdout.strip().splitlines()[-2:]
    exe, data = line.split()[:2]
    assert exe.endswith("fairseq-train") and data == str(tmp_path / "data-bin" / "wmt14.en-de")
    assert line.endswith("--cpu --max-update 7")
    assert f"--save-dir {tmp_path}/runs/wmt14_en_de/labo/seed3/checkpoints " in line
    assert comment.startswith(f"# run directory {tmp_path}/runs/wmt14_en_de/labo/seed3:") and "train.log" in comment
    assert "--labo-warmup-updates 10000" in line and "--seed 3" in line
    assert not (tmp_path / "runs").exists()
    rooted = run("wmt14_en_de", "labo", 3, "--dry-run", "--root", "elsewhere", cwd=tmp_path)
    assert f" {tmp_path}/elsewhere/data-bin/wmt14.en-de " in rooted.stdout


@pytest.mark.parametrize("args,message", [
    (("nope", "labo", 1), "unknown dataset 'nope'"),
    (("iwslt14_de_en", "nope", 1), "unknown method 'nope'"),
    (("iwslt14_de_en", "ls", 1, "--tau", "1.25"), "--tau applies to the labo method only"),
    (("iwslt14_de_en", "ls", 1, "--update-freq", "0"), "--update-freq >= 1"),
    (("iwslt14_de_en", "labo", 1, "--tau", "0"), "--tau must be in (0, inf), got 0.0"),
    (("iwslt14_de_en", "ls", 1, "--gpus", "2", "--procs", "2"), "--procs is for CPU ranks"),
    (("wmt14_en_de", "ls", 1, "--nodes", "2"), "--nodes needs --gpus"),
    (("wmt14_en_de", "ls", 1, "--gpus", "8", "--nodes", "2"), "needs --master-addr"),
    (("iwslt14_de_en", "ls", 1, "--procs", "2", "--master-port", "70000"), "--master-port must be in [0, 65535]"),
    (("wmt14_en_de", "ls", 1, "--gpus", "8", "--nodes", "2", "--node-rank", "2", "--master-addr", "n0"),
     "--node-rank must be in [0, 1]"),
])
def test_bad_arguments_are_clear_errors(args, message):
    proc = run(*args, "--dry-run")
    assert proc.returncode == 2 and message in proc.stderr


def test_existing_run_directory_is_resumed_and_foreign_one_never_deleted(tmp_path):
    out = train_command("iwslt14_de_en", "ls", 1, runs_root=tmp_path).run_dir
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("keep")
    resumed = run("iwslt14_de_en", "ls", 1, "--runs-root", tmp_path, "--dry-run")
    assert resumed.returncode == 0 and "would resume" in resumed.stdout
    refused = run("iwslt14_de_en", "ls", 1, "--runs-root", tmp_path, "--force")
    assert refused.returncode == 2 and "not made by this command" in refused.stderr
    assert (out / "precious.txt").read_text() == "keep"


def _parse(train_args):
    return options.parse_args_and_arch(options.get_training_parser(), train_args)


@pytest.mark.slow
def test_cpu_ranks_get_fairseqs_gloo_flags_and_one_rendezvous():
    launch = train_command("iwslt14_de_en", "labo", 1, procs=3, master_port=12345)
    assert len(launch.processes) == 3
    for rank, cmd in enumerate(launch.processes):
        args = _parse(cmd[1:])
        assert (args.cpu, args.distributed_backend, args.ddp_backend) == (True, "gloo", "legacy_ddp")
        assert args.distributed_world_size == 3 and args.distributed_rank == rank and args.distributed_no_spawn
        assert args.distributed_init_method == "tcp://127.0.0.1:12345"


@pytest.mark.slow
def test_several_nodes_launch_fairseq_train_under_torchrun():
    launch = train_command("wmt14_en_de", "labo", 2, gpus=8, nodes=2, node_rank=1, master_addr="node0")
    (cmd,) = launch.processes
    assert cmd[0].endswith("torchrun")
    assert cmd[1:12] == ["--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "8",
                        "--master-addr", "node0", "--master-port", "29500", cmd[11]]
    assert cmd[11].endswith("fairseq-train")
    args = _parse(cmd[12:])  # fairseq takes rank and world size from torchrun's environment (env://)
    assert args.distributed_world_size == 16 and args.fp16 and args.seed == 2


def _curve(*bleus):
    return [{"epoch": e, "updates": 10 * e, "bleu": b, "nll_loss": 3.0} for e, b in enumerate(bleus, 1)]


RULE = ["fairseq-train", "d", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric", "--patience", "3"]


def test_the_stopping_rule_counts_validations_after_the_first_best_as_fairseq_does():
    from labo_fairseq.study.protocol import plateau

    rising = plateau(_curve(10, 20, 30, 29, 30), RULE)  # an equal value is no improvement, as in fairseq
    assert (rising.best_epoch, rising.last_epoch, rising.since_best, rising.converged) == (3, 5, 2, False)
    done = plateau(_curve(10, 20, 30, 29, 30, 28), RULE)
    assert done.converged and done.as_dict()["best"] == 30
    from labo_fairseq.study.protocol import Plateau

    assert Plateau.from_dict(done.as_dict()) == done and Plateau.from_dict(rising.as_dict()) == rising
    old_record = {k: v for k, v in rising.as_dict().items() if k != "cap_reached"}  # written before the field
    assert not Plateau.from_dict(old_record).stopped
    repeated = plateau(_curve(10, 30, 29) + _curve(10, 30, 29)[2:] + [{"epoch": 4, "updates": 40, "bleu": 1}], RULE)
    assert repeated.since_best == 2  # epoch 3 validated twice (a resume) counts once
    by_nll = plateau([{"epoch": 1, "nll_loss": 3.0}, {"epoch": 2, "nll_loss": 2.0}],
                     ["x", "--best-checkpoint-metric", "nll_loss", "--patience", "1"])
    assert by_nll.best_epoch == 2 and not by_nll.converged
    assert not plateau(_curve(30, 1, 1, 1), ["x", "--best-checkpoint-metric", "bleu"]).converged  # no rule: never


def _fake_train(tmp_path, monkeypatch, curve_lines):
    """train's wrapper around a fake fairseq-train that appends validations to the log."""
    from labo_fairseq.study import train as T

    calls = []

    def fake_run_logged(processes, logs, cwd=None, echo=True, env=None, keep_fds=()):
        calls.append((processes, env))
        with open(logs[0], "a") as f:
            f.writelines(curve_lines.pop(0) if curve_lines else [])
        return 0

    monkeypatch.setattr(T, "run_logged", fake_run_logged)
    def fake_state(path):  # a stand-in checkpoint holds its update count as text (check_checkpoint passes it)
        text = path.read_text()
        if not text.isdigit():
            raise RuntimeError("PytorchStreamReader failed reading zip archive")  # what torch says
        return {"updates": int(text)}

    monkeypatch.setattr(T, "checkpoint_state", fake_state)
    data = tmp_path / "data-bin" / "multi30k.de-en"
    data.mkdir(parents=True)
    return calls, lambda: T.main(["multi30k_de_en_converged", "ls", "1", "--root", str(tmp_path)])


def _valid(epoch, bleu):
    return f'x | INFO | valid | {{"epoch": {epoch}, "valid_bleu": "{bleu}", "valid_num_updates": "{epoch * 133}"}}\n'


def _interrupted_run(tmp_path, lines, last_epoch=None, best_epoch=None):
    """A run stopped after ``lines``, its checkpoints saved at the end of the epochs given (default:
    checkpoint_last.pt at the last validation logged)."""
    rd = tmp_path / "runs" / "multi30k_de_en_converged" / "ls" / "seed1"
    (rd / "checkpoints").mkdir(parents=True)
    (rd / RUN_MARKER).write_text(json.dumps({"command": []}))  # an interrupted run: no 'completed'
    (rd / "train.log").write_text("".join(lines))
    last_epoch = len(lines) if last_epoch is None else last_epoch
    for name, epoch in (("checkpoint_last.pt", last_epoch), ("checkpoint_best.pt", best_epoch)):
        if epoch:
            (rd / "checkpoints" / name).write_text(str(epoch * 133))
    return rd


def test_a_resumed_run_gets_its_count_since_the_best_and_a_finished_one_is_not_trained_again(tmp_path, monkeypatch,
                                                                                              capsys):
    from labo_fairseq.plugin.fixes import SINCE_BEST_ENV

    first = [_valid(1, 10), _valid(2, 20), _valid(3, 19), _valid(4, 18)]  # 2 validations since the best
    calls, train = _fake_train(tmp_path, monkeypatch, [[_valid(e, 19) for e in range(5, 13)]])
    rd = _interrupted_run(tmp_path, first)
    assert train() == 0
    (processes, env), = calls
    assert env[SINCE_BEST_ENV] == "2" and "--patience" not in processes[0][-2:]  # the full patience, seeded
    stopping = json.loads((rd / RUN_MARKER).read_text())["stopping"]
    assert (stopping["best_epoch"], stopping["last_epoch"], stopping["converged"]) == (2, 12, True)
    assert train() == 0 and len(calls) == 1  # finished: not started again
    assert "has finished training (converged: best epoch 2, stopped at epoch 12" in capsys.readouterr().err


def test_a_run_at_its_cap_is_finished_and_one_stopped_early_is_trained_on(tmp_path, monkeypatch, capsys):
    from labo_fairseq.study import train as T

    first = [_valid(1, 10), _valid(2, 20), _valid(3, 19)]
    calls, _ = _fake_train(tmp_path, monkeypatch, [[], [_valid(4, 18), _valid(5, 18)]])
    rd = _interrupted_run(tmp_path, first)
    capped = ["multi30k_de_en_converged", "ls", "1", "--root", str(tmp_path), "--", "--max-epoch", "5"]
    assert T.main(capped) == 0  # a process that adds no validation: marked completed, not converged
    assert not json.loads((rd / RUN_MARKER).read_text())["stopping"]["cap_reached"]
    assert T.main(capped) == 0  # so the next call trains on, here to the cap
    assert "stopped before its rule or its cap said so" in capsys.readouterr().err
    stopping = json.loads((rd / RUN_MARKER).read_text())["stopping"]
    assert stopping["cap_reached"] and not stopping["converged"] and len(calls) == 2
    assert T.main(capped) == 0 and len(calls) == 2
    assert "reached its cap at epoch 5 before its patience ran out" in capsys.readouterr().err


def test_a_run_whose_rule_was_met_before_it_was_stopped_is_marked_converged_without_training(tmp_path, monkeypatch):
    done = [_valid(1, 30)] + [_valid(e, 20) for e in range(2, 12)]
    calls, train = _fake_train(tmp_path, monkeypatch, [])
    rd = _interrupted_run(tmp_path, done)
    (rd / RUN_MARKER).write_text(json.dumps({"command": [], "started": "then"}))
    assert train() == 0 and calls == []
    record = json.loads((rd / RUN_MARKER).read_text())
    assert record["stopping"]["converged"] and record["stopping"]["last_epoch"] == 11 and record["started"] == "then"


def test_progress_shows_one_line_per_epoch_and_its_validation():
    from labo_fairseq.study.train import Progress

    p = Progress(["fairseq-train", "--max-epoch", "10"])
    assert p("2026 | INFO | fairseq.trainer | loaded checkpoint\n") is None
    line = p('x | INFO | train | {"epoch": 2, "train_loss": "5.1", "train_nll_loss": "4.9", "train_num_updates": "266"}\n')
    assert line.startswith("epoch 2: loss 5.1 nll 4.9 (266 updates, ") and "min left" in line
    assert p('x | INFO | valid | {"epoch": 2, "valid_nll_loss": "4.2", "valid_bleu": "30.1"}\n') == \
        "  valid: nll 4.2, BLEU 30.1\n"
    assert p("ValueError: --labo-tau must be in (0, inf), got -1.0\n").startswith("ValueError")


def test_a_finished_run_trains_on_only_when_a_cap_is_raised():
    from labo_fairseq.study.train import _longer_caps

    before = ["fairseq-train", "d", "--max-epoch", "150", "--max-update", "800"]
    assert _longer_caps(before, before) == ""
    assert _longer_caps(before, [*before, "--max-update", "1000"]) == "--max-update 1000 (was 800)"
    assert _longer_caps(before, [*before, "--max-update", "500"]) == ""
    assert _longer_caps(["x", "--max-epoch", "45"], ["x"]) == "--max-epoch unbounded (was 45)"


def test_a_validation_whose_state_was_not_saved_is_not_counted_on_resume(tmp_path, monkeypatch):
    """Stopped after epoch 5's validation was logged but before its checkpoint was saved: fairseq
    resumes from epoch 4 and validates epoch 5 again, so the count it is seeded with stops at epoch 4."""
    from labo_fairseq.plugin.fixes import SINCE_BEST_ENV
    from labo_fairseq.study.fairseq_tools import validation_curve

    first = [_valid(1, 10), _valid(2, 20), _valid(3, 19), _valid(4, 18), _valid(5, 18)]
    calls, train = _fake_train(tmp_path, monkeypatch, [[_valid(e, 19) for e in range(5, 13)]])
    rd = _interrupted_run(tmp_path, first, last_epoch=4, best_epoch=2)
    assert train() == 0
    (_, env), = calls
    assert env[SINCE_BEST_ENV] == "2"  # epochs 3 and 4; counting the unsaved epoch 5 would stop a validation early
    stopping = json.loads((rd / RUN_MARKER).read_text())["stopping"]
    assert (stopping["best_epoch"], stopping["last_epoch"], stopping["converged"]) == (2, 12, True)
    assert [r["epoch"] for r in validation_curve(rd / "train.log")] == list(range(1, 13))  # epoch 5 once


@pytest.mark.parametrize("last", ["older", "cut short", "missing"])
def test_a_checkpoint_last_left_behind_its_best_is_put_back_before_resuming(tmp_path, monkeypatch, capsys, last):
    """A stop while fairseq copied a new checkpoint_best.pt to checkpoint_last.pt: the run resumes
    from the best, the newer state, and not from an older one (or fails on a file cut short)."""
    from labo_fairseq.plugin.fixes import SINCE_BEST_ENV

    first = [_valid(1, 10), _valid(2, 20), _valid(3, 19), _valid(4, 18), _valid(5, 21)]  # epoch 5: a new best
    calls, train = _fake_train(tmp_path, monkeypatch, [[_valid(e, 19) for e in range(6, 16)]])
    rd = _interrupted_run(tmp_path, first, last_epoch=4, best_epoch=5)
    ckpt = rd / "checkpoints" / "checkpoint_last.pt"
    if last == "cut short":
        ckpt.write_bytes(b"PK\x03\x04" + b"\0" * 40)  # a torch archive's start, no end
    elif last == "missing":
        ckpt.unlink()
    assert train() == 0
    said = f"checkpoint_last.pt was {'missing' if last == 'missing' else last}: put back from checkpoint_best.pt (665 updates)"
    assert ckpt.read_text() == str(5 * 133) and said in capsys.readouterr().err
    (_, env), = calls
    assert env[SINCE_BEST_ENV] == "0"
    assert json.loads((rd / RUN_MARKER).read_text())["stopping"]["best_epoch"] == 5


def test_a_checkpoint_last_cut_short_with_nothing_newer_is_refused_before_fairseq(tmp_path, monkeypatch):
    from labo_fairseq.runtime.errors import InvalidFile

    calls, train = _fake_train(tmp_path, monkeypatch, [])
    rd = _interrupted_run(tmp_path, [_valid(1, 10), _valid(2, 20)])
    (rd / "checkpoints" / "checkpoint_last.pt").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(InvalidFile, match="checkpoint_last.pt is truncated or damaged"):
        train()
    assert calls == []


def test_a_run_another_process_trains_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from labo_fairseq.runtime.errors import InUse
    from labo_fairseq.runtime.files import exclusive

    calls, train = _fake_train(tmp_path, monkeypatch, [])
    rd = _interrupted_run(tmp_path, [_valid(1, 10)])
    before = (rd / RUN_MARKER).read_text()
    with exclusive(rd, "run"):  # a stray train of the same run
        with pytest.raises(InUse, match=f"run {rd} is in use by another process"):
            train()
    assert calls == [] and (rd / RUN_MARKER).read_text() == before


def test_an_empty_checkpoint_last_is_put_back_from_the_interval_checkpoint_saved_last(tmp_path, monkeypatch, capsys):
    """Saves every N updates: fairseq writes checkpoint_E_U.pt and copies it to checkpoint_last.pt, so
    the newest state may be neither the last nor the best."""
    calls, train = _fake_train(tmp_path, monkeypatch, [[_valid(e, 19) for e in range(4, 14)]])
    rd = _interrupted_run(tmp_path, [_valid(1, 10), _valid(2, 20), _valid(3, 18)], best_epoch=2)
    (rd / "checkpoints" / "checkpoint_3_400.pt").write_text("400")
    (rd / "checkpoints" / "checkpoint_last.pt").write_bytes(b"")  # the copy had just begun
    assert train() == 0
    assert (rd / "checkpoints" / "checkpoint_last.pt").read_text() == "400"
    assert "checkpoint_last.pt was cut short: put back from checkpoint_3_400.pt (400 updates)" in capsys.readouterr().err
