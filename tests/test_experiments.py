"""configs/ and the train command: every dataset x method builds a fairseq-train command that
fairseq's own parser accepts, with a registered criterion whose flags pass its checks."""

import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

import labo_fairseq  # noqa: E402,F401
from fairseq import options  # noqa: E402
from fairseq.criterions import CRITERION_REGISTRY  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

from labo_fairseq.experiments import names, train_command  # noqa: E402

DATASETS = ["iwslt14_de_en", "iwslt14_en_de", "iwslt14_en_fr", "iwslt14_fr_en", "iwslt17_multi",
            "wmt14_en_de", "wmt14_de_en"]
METHODS = ["afl", "ce", "cp", "fl", "labo", "ls"]


def test_every_dataset_and_method_has_a_config():
    assert names("datasets") == sorted(DATASETS) and names("methods") == METHODS


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method,tau", [(m, None) for m in METHODS] + [("labo", 1.25)])
def test_config_parses_with_fairseq_and_builds_its_criterion(dataset, method, tau, tmp_path):
    argv, run = train_command(dataset, method, 1, tau=tau, gpus=2, runs_root=tmp_path)
    assert argv[0] == "fairseq-train"
    args = options.parse_args_and_arch(options.get_training_parser(), argv[1:])  # SystemExit on a bad flag
    assert args.criterion in CRITERION_REGISTRY
    cfg = convert_namespace_to_omegaconf(args)
    criterion = CRITERION_REGISTRY[args.criterion].build_criterion(cfg.criterion, None)
    assert args.max_tokens == 4096 and args.seed == 1 and args.fp16 and args.distributed_world_size == 2
    assert args.save_dir == str(run / "checkpoints")
    if method == "labo":
        assert criterion.tau == (tau or 1.15)
        assert criterion.warmup_updates == (10000 if dataset.startswith("wmt") else 5000)
    if dataset != "iwslt17_multi":
        assert args.eval_bleu and args.best_checkpoint_metric == "bleu"
        src, tgt = dataset.split("_")[1:]
        assert (args.source_lang, args.target_lang) == (src, tgt)


def run(*args):
    return subprocess.run([sys.executable, "-m", "labo_fairseq.experiments", "train", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def test_dry_run_prints_the_command_and_writes_nothing(tmp_path):
    proc = run("wmt14_en_de", "labo", 3, "--runs-root", tmp_path / "runs", "--dry-run", "--", "--max-update", "7")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("fairseq-train data-bin/wmt14.en-de ") and line.endswith("--cpu --max-update 7")
    assert "--labo-warmup-updates 10000" in line and "--seed 3" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,message", [
    (("nope", "labo", 1), "unknown dataset 'nope'"),
    (("iwslt14_de_en", "nope", 1), "unknown method 'nope'"),
    (("iwslt14_de_en", "ls", 1, "--tau", "1.25"), "--tau applies to the labo method only"),
    (("iwslt14_de_en", "ls", 1, "--update-freq", "0"), "--update-freq >= 1"),
])
def test_bad_arguments_are_clear_errors(args, message):
    proc = run(*args, "--dry-run")
    assert proc.returncode == 2 and message in proc.stderr


def test_existing_run_directory_is_resumed_and_foreign_one_never_deleted(tmp_path):
    _, out = train_command("iwslt14_de_en", "ls", 1, runs_root=tmp_path)
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("keep")
    resumed = run("iwslt14_de_en", "ls", 1, "--runs-root", tmp_path, "--dry-run")
    assert resumed.returncode == 0 and "would resume" in resumed.stdout
    refused = run("iwslt14_de_en", "ls", 1, "--runs-root", tmp_path, "--force")
    assert refused.returncode == 2 and "not made by this command" in refused.stderr
    assert (out / "precious.txt").read_text() == "keep"
