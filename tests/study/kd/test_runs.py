"""The distillation experiment's wiring without running fairseq: run tags, teacher resolution, the
train/evaluate/distill-data commands' --dry-run and errors, and the tables' distillation view."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from labo_fairseq.study import tables as T
from labo_fairseq.study.kd import runs as kd_runs
from tests.helpers import REPO, command
from tests.study.test_tables import SIG, row


def train_main(argv) -> int:
    return command("train", *argv)


def make_run(root, dataset, tag, seed, method, tau=None, distillation=None):
    rd = root / dataset / tag / f"seed{seed}"
    rd.mkdir(parents=True)
    rec = {"dataset": dataset, "method": method, "seed": seed, "tau": tau}
    if distillation:
        rec["distillation"] = distillation
    (rd / "run.json").write_text(json.dumps(rec))
    return rd


def test_teacher_resolution_by_name_path_and_run_json(tmp_path):
    make_run(tmp_path, "multi30k_de_en", "labo-tau1.25", 3, "labo", 1.25)
    t = kd_runs.resolve_teacher("labo-tau1.25/seed3", tmp_path, "multi30k_de_en")
    assert (t.method, t.tau, t.seed, t.tag) == ("labo", 1.25, 3, "labo-tau1.25-seed3")
    assert t.checkpoint() == tmp_path.absolute() / "multi30k_de_en/labo-tau1.25/seed3/checkpoints/checkpoint_best.pt"
    t2 = kd_runs.resolve_teacher(str(tmp_path / "multi30k_de_en/labo-tau1.25/seed3"), tmp_path / "elsewhere", "x")
    assert t2.tag == t.tag
    assert kd_runs.resolve_teacher("ls/seed1", tmp_path, "d").tag == "ls-seed1"  # not trained yet: from the name
    with pytest.raises(kd_runs.KDError, match="--teacher nonsense"):
        kd_runs.resolve_teacher("nonsense", tmp_path, "d")
    make_run(tmp_path, "d", "kd-ls-seed1", 1, "kd", distillation={"kind": "word"})
    with pytest.raises(kd_runs.KDError, match="is a student run"):
        kd_runs.resolve_teacher("kd-ls-seed1/seed1", tmp_path, "d")


def test_plans_tags_data_and_flags(tmp_path):
    p = kd_runs.plan("multi30k_de_en", "m.de-en", "kd", None, ["ls/seed1", "labo/seed2"], None, False, tmp_path, tmp_path)
    assert p.tag == "kd-ls-seed1+labo-seed2" and p.data == "m.de-en" and p.record["kind"] == "word"
    assert p.args["--teacher-path"].count(":") == 1 and p.args["--encoder-embed-dim"] == 64
    s = kd_runs.plan("iwslt14_de_en", "i.de-en", "ce", None, [], "seqkd:ls/seed1", False, tmp_path, tmp_path)
    assert (s.tag, s.data, s.record["kind"]) == ("ce-seqkd-ls-seed1", "i.de-en.seqkd-ls-seed1", "seq")
    assert s.args["--encoder-embed-dim"] == 256 and s.needs == [tmp_path / "i.de-en.seqkd-ls-seed1"]
    n = kd_runs.plan("iwslt14_de_en", "i.de-en", "ce", None, [], None, True, tmp_path, tmp_path)
    assert (n.tag, n.record["kind"]) == ("ce-student", "none")
    assert kd_runs.plan("iwslt14_de_en", "i", "ls", None, [], None, False, tmp_path, tmp_path) is None


def test_student_is_smaller_than_its_teacher():
    from labo_fairseq.study.protocol import dataset_config

    for ds in ("multi30k_de_en", "iwslt14_de_en"):
        teacher, student = dataset_config(ds)["args"], kd_runs.student_args(ds)
        t_dim = int(teacher.get("--encoder-embed-dim", 512))  # transformer_iwslt_de_en: 512
        assert int(student["--encoder-embed-dim"]) < t_dim
        assert int(student["--encoder-layers"]) < int(teacher.get("--encoder-layers", 6))


@pytest.mark.parametrize("argv,message", [
    (["multi30k_de_en", "kd", "1"], "method kd .* needs --teacher RUN"),
    (["multi30k_de_en", "ls", "1", "--teacher", "ce/seed1"], "--teacher is for method kd"),
    (["multi30k_de_en", "ce", "1", "--data-variant", "ls/seed1"], "--data-variant must be seqkd:RUN"),
])
def test_train_rejects_bad_student_flags(argv, message, capsys):
    assert train_main(argv + ["--dry-run"]) == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_train_refuses_a_student_whose_teacher_is_missing(tmp_path, capsys):
    rc = train_main(["multi30k_de_en", "kd", "1", "--teacher", "ls/seed1", "--runs-root", str(tmp_path)])
    assert rc == 2
    assert "checkpoint_best.pt (train the teacher first" in capsys.readouterr().err
    assert not (tmp_path / "multi30k_de_en" / "kd-ls-seed1").exists()


def test_train_dry_run_word_and_sequence_students(tmp_path, capsys):
    assert train_main(["multi30k_de_en", "kd", "4", "--teacher", "ls/seed1", "--runs-root", str(tmp_path),
                       "--dry-run"]) == 0
    cmd = capsys.readouterr().out
    assert "--criterion word_distillation" in cmd and "--kd-alpha 0.5" in cmd
    assert f"--teacher-path {tmp_path.absolute()}/multi30k_de_en/ls/seed1/checkpoints/checkpoint_best.pt" in cmd
    assert "kd-ls-seed1/seed4/checkpoints" in cmd and "--encoder-embed-dim 64" in cmd
    assert train_main(["multi30k_de_en", "ce", "4", "--data-variant", "seqkd:ls/seed1", "--data-root", "db",
                       "--dry-run"]) == 0
    cmd = capsys.readouterr().out
    assert f" {Path.cwd()}/db/multi30k.de-en.seqkd-ls-seed1 " in cmd and "ce-seqkd-ls-seed1/seed4" in cmd


def test_cli_lists_distill_data_and_its_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "labo_fairseq", "distill-data", "multi30k_de_en", "ls/seed1",
                           "--runs-root", str(tmp_path), "--data-root", str(tmp_path / "db"), "--shards", "3",
                           "--dry-run"], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO),
                                                                                          "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and all("--gen-subset train --beam 5" in ln for ln in lines[:3])
    assert "--distributed-world-size 3 --distributed-rank 2" in lines[2]
    assert lines[3].startswith("fairseq-preprocess") and "--srcdict" in lines[3]
    assert "multi30k.de-en.seqkd-ls-seed1/.distill/shard-0000-of-0003.txt" in lines[0]
    bad = subprocess.run([sys.executable, "-m", "labo_fairseq", "distill-data", "multi30k_de_en", "ls/seed1",
                          "--shards", "0"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "--shards must be >= 1" in bad.stderr


def test_teacher_gamma_from_the_train_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text('x | train | {"epoch": 1, "train_gamma": "0.4"}\n'
                   'x | valid | {"epoch": 1, "valid_gamma": "0.31"}\nx | train | {"epoch": 2, "train_gamma": "0.2"}\n')
    assert kd_runs.teacher_gamma(tmp_path) == {"gamma": 0.2, "split": "train"}  # the last epoch's, on training data
    log.write_text('x | valid | {"epoch": 2, "valid_gamma": "0.25"}\n')
    assert kd_runs.teacher_gamma(tmp_path) == {"gamma": 0.25, "split": "valid"}
    assert kd_runs.teacher_gamma(tmp_path / "none") is None


# ------------------------------------------------------------------------------ the table view


def res(method, seed, bleu, tau=None, distillation=None):
    r = {"dataset": "multi30k_de_en", "method": method, "seed": seed, "tau": tau, "extra_train_args": [],
         "directions": {"de-en": {"bleu": bleu, "sacrebleu": bleu - 1, "convention": "tokenized",
                                  "paper_metric": {"signature": SIG}, "sacrebleu_signature": SIG}}}
    if distillation:
        r["distillation"] = distillation
    return r


def teacher(method, seed, tau=None):
    return {"method": method, "seed": seed, "tau": tau, "run": "x", "tag": f"{method}-seed{seed}"}


def test_distillation_view_cells():
    rs = [res("ce", 1, 30.0), res("ls", 1, 31.0), res("ls", 2, 32.0), res("labo", 1, 33.0, tau=1.15),
          res("kd", 1, 25.0, distillation={"kind": "word", "teachers": [teacher("ls", 1)],
                                            "teacher_gamma": {"gamma": 0.2, "split": "valid"}}),
          res("kd", 2, 26.0, distillation={"kind": "word", "teachers": [teacher("ls", 2)],
                                            "teacher_gamma": {"gamma": 0.3, "split": "valid"}}),
          res("ce", 1, 24.0, distillation={"kind": "seq", "seq_teacher": teacher("labo", 1)}),
          res("ce", 1, 20.0, distillation={"kind": "none"}), res("ce", 2, 21.0, distillation={"kind": "none"})]
    text = T.build_distillation(rs)
    ls = row(text, "LS teacher")
    assert ls[0] == f"31.50 ± {statistics.stdev([31, 32]):.2f} (n=2)"
    assert ls[1] == f"0.250 ± {statistics.stdev([0.2, 0.3]):.3f} (n=2)"
    assert ls[2] == f"25.50 ± {statistics.stdev([25, 26]):.2f} (n=2)" and ls[3] == "missing"
    assert ls[4] == f"20.50 ± {statistics.stdev([20, 21]):.2f} (n=2)"
    labo = row(text, "LABO τ=1.15 teacher")
    assert labo[:4] == ["33.00 (n=1)", "missing", "missing", "24.00 (n=1)"]
    assert row(text, "Transformer (CE) teacher")[:3] == ["30.00 (n=1)", "missing", "missing"]
    # students stay out of the ordinary tables
    other = T.build(rs)
    assert "25.00" not in other and "20.00" not in other and "| kd |" not in other
    assert "No distillation results" in T.build_distillation([res("ls", 1, 31.0)])


def test_tables_command_distillation_view(tmp_path):
    d = tmp_path / "results" / "multi30k_de_en"
    d.mkdir(parents=True)
    (d / "a.json").write_text(json.dumps(res("ls", 1, 31.0)))
    (d / "b.json").write_text(json.dumps(res("ce", 1, 20.0, distillation={"kind": "none"})))
    proc = subprocess.run([sys.executable, "-m", "labo_fairseq", "tables", "--view", "distillation", "--results",
                           str(tmp_path / "results")], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "### Distillation: multi30k_de_en DE-EN (bleu)" in proc.stdout
    assert row(proc.stdout, "LS teacher")[0] == "31.00 (n=1)"
