"""labo-fairseq bench-training: the four commands differ only where they should; ratios are per round;
a tiny real run of every variant (slow)."""

import shlex

import pytest

from labo_fairseq.runtime.files import read_json
from labo_fairseq.study import bench_training as bt
from tests.helpers import cli


def _commands(capsys, *extra):
    assert bt.main(["--dry-run", "--updates", "7", *extra]) == 0
    out = capsys.readouterr().out.split("# ")[1:]
    return {block.split("\n", 1)[0]: shlex.split(block.split("\n", 1)[1]) for block in out}


def last(argv, flag):
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def without(argv, *flags):
    """``argv`` without each flag and its value (every occurrence)."""
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in flags:
            skip = True
        else:
            out.append(tok)
    return out


def test_variants_differ_only_in_loss_and_path(capsys):
    cmds = _commands(capsys, "--chunk-tokens", "512")
    assert list(cmds) == ["LS", "LABO", "LS fused", "LABO fused"]
    loss = ("--criterion", "--label-smoothing", "--labo-tau", "--labo-rho", "--labo-warmup-updates",
            "--loss-chunk-tokens", "--save-dir")
    rest = {name: without(argv, *loss) for name, argv in cmds.items()}
    assert rest["LS"] == rest["LABO"] == rest["LS fused"] == rest["LABO fused"]
    assert without(cmds["LS"], "--save-dir", "--criterion") == without(cmds["LS fused"], "--save-dir", "--criterion",
                                                                       "--loss-chunk-tokens")
    assert [last(c, "--criterion") for c in cmds.values()] == [
        "label_smoothed_cross_entropy", "label_smoothed_labo", "label_smoothed_ce", "label_smoothed_labo"]
    for name, argv in cmds.items():
        assert last(argv, "--max-update") == "7" and "--disable-validation" in argv and "--no-save" in argv
        assert ("--loss-chunk-tokens" in argv) == name.endswith("fused")
        if "LABO" in name:
            assert last(argv, "--labo-warmup-updates") == "0"  # LABO active from the first update
    assert last(cmds["LABO fused"], "--loss-chunk-tokens") == "512"


def test_ratios_are_medians_of_per_round_ratios():
    rounds = [{n: {"train_wall_s": t, "process_s": t + 5, "cpu_s": t - 1} for n, t in zip(bt.VARIANTS, times)}
              for times in ([100, 120, 101, 103], [200, 220, 190, 210], [100, 130, 100, 104])]
    got = bt.ratios(rounds, "train_wall_s")
    assert got["LABO"] == pytest.approx(1.2)  # median of 1.2, 1.1, 1.3
    assert got["LABO fused"] == pytest.approx(1.04)  # median of 1.03, 1.05, 1.04
    assert "| LABO fused | 104.0 | 1.040x | 109.0 | " in bt.report(rounds)
    rounds[0]["LS"]["train_wall_s"] = 0  # fairseq's whole seconds of a very short run
    assert bt.ratios(rounds[:1], "train_wall_s")["LABO"] != bt.ratios(rounds[:1], "train_wall_s")["LABO"]  # nan


@pytest.mark.parametrize("args, message", [(["--rounds", "0"], "--rounds"), (["--dataset", "nosuch"], "nosuch")])
def test_bad_values_fail_in_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as err:
        bt.main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and message in lines[-1] and "Traceback" not in "".join(lines)


@pytest.mark.slow
def test_tiny_run_of_every_variant(multi30k_small, tmp_path):
    out = tmp_path / "bench.json"
    proc = cli("bench-training", "--root", multi30k_small, "--updates", "3", "--rounds", "1", "--threads", "1",
               "--chunk-tokens", "300", "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = read_json(out)
    (round_,) = rec["rounds"]
    assert set(round_) == set(bt.VARIANTS) and all(r["process_s"] > 0 and r["cpu_s"] > 0 for r in round_.values())
    assert rec["provenance"]["command"].startswith("labo-fairseq bench-training")
