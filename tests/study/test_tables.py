"""The tables command: mean ± sample std per cell, seeds counted, the paper's number and Δ beside it,
missing cells said to be missing, τ rows for LABO, † for runs off the paper's protocol."""

import json
import re
import statistics
import subprocess
import sys

import pytest

from labo_fairseq.runtime.errors import UsageError
from labo_fairseq.study import tables as T
from tests.helpers import REPO

SIG = "nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:2.6.0"


def result(dataset, method, seed, scores, tau=None, extra=()):
    """A results JSON as the evaluate command writes it (the fields the tables read)."""
    return {"dataset": dataset, "method": method, "seed": seed, "tau": tau, "extra_train_args": list(extra),
            "directions": {pair: {"bleu": b, "sacrebleu": b - 1, "convention": "tokenized",
                                  "paper_metric": {"signature": SIG},
                                  "sacrebleu_signature": SIG.replace("tok:none", "tok:13a")}
                           for pair, b in scores.items()}}


def row(text, title):
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {title} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_cells_mean_std_n_paper_and_delta():
    rs = [result("iwslt14_de_en", "ls", s, {"de-en": b}) for s, b in ((1, 34.0), (2, 34.6), (3, 34.3))]
    rs.append(result("wmt14_de_en", "ls", 1, {"de-en": 31.0}))
    text = T.build(rs)
    cells = row(text, "LS")
    mean, std = statistics.fmean([34.0, 34.6, 34.3]), statistics.stdev([34.0, 34.6, 34.3])
    assert cells[0] == f"{mean:.2f} ± {std:.2f} (n=3) · paper 34.5±0.14 · Δ {mean - 34.5:+.2f}"
    assert cells[5] == "31.00 (n=1) · paper 31.9±0.09 · Δ -0.90"  # one seed: no std
    assert cells[1] == "missing · paper 28.3±0.16"  # never filled in
    assert row(text, "Transformer (CE)")[0] == "missing · paper 33.9±0.09"
    assert f"`tokenized: {SIG}`" in text and "†" not in text


def test_labo_gets_a_row_per_tau_and_sacrebleu_is_selectable():
    rs = [result("iwslt14_en_de", "labo", 1, {"en-de": 29.0}, tau=1.15),
          result("iwslt14_en_de", "labo", 1, {"en-de": 28.0}, tau=1.25)]
    text = T.build(rs)
    assert row(text, "LABO τ=1.15")[1].startswith("29.00 (n=1) · paper 28.8±0.15 · Δ +0.20")
    assert row(text, "LABO τ=1.25")[1].startswith("28.00 (n=1) · paper 28.8±0.15 · Δ -0.80")
    assert row(T.build(rs, metric="sacrebleu"), "LABO τ=1.15")[1].startswith("28.00 (n=1)")


def test_table2_runs_off_protocol_and_other_datasets():
    rs = [result("iwslt17_multi", "labo", s, {"de-en": 28.0 + s, "fr-en": 37.0}, tau=1.15, extra=["--max-update", "9"])
          for s in (1, 2)]
    rs.append(result("multi30k_de_en", "ls", 1, {"de-en": 20.5}))
    text = T.build(rs)
    table2 = text[text.index("### Table 2"):]
    assert row(table2, "LABO τ=1.15") == [f"29.50 ± {statistics.stdev([29, 30]):.2f} (n=2) † · paper 28.4 · Δ +1.10",
                                         "37.00 ± 0.00 (n=2) † · paper 37.2 · Δ -0.20"]
    assert "`train: --max-update 9`" in table2
    other = text[text.index("### multi30k_de_en, de→en (not a table of the paper)"):]
    assert row(other, "LS") == ["20.50 (n=1)"]  # no paper number for a dataset outside the paper
    only = T.build(rs, only="multi30k_de_en")
    assert "Table 1" not in only and row(only, "LS") == ["20.50 (n=1)"]


def m30k(method, seed, bleu, chrf=None, completed=True, tau=None):
    """A Multi30k result on its three test sets; ``chrf=None``: an older result without chrF."""
    r = result("multi30k_de_en", method, seed, {"de-en": bleu, "de-en.test_2017_flickr": bleu - 2,
                                                "de-en.test_2017_mscoco": bleu - 5}, tau=tau)
    for d in r["directions"].values():
        if chrf is not None:
            d["chrf"], d["chrf_signature"] = chrf, "nrefs:1|case:lc|eff:yes|nc:6|nw:0|space:no|version:2.6.0"
    r["training_completed"] = completed
    return r


def test_test_sets_are_named_and_chrf_is_a_metric():
    rs = [m30k("ls", 1, 40.0, chrf=60.0), m30k("ls", 2, 41.0, chrf=61.0), m30k("labo", 1, 39.0)]
    bleu = T.build(rs, only="multi30k_de_en")
    header = next(ln for ln in bleu.splitlines() if ln.startswith("| method |"))
    assert header == "| method | test_2016_flickr | test_2017_flickr | test_2017_mscoco |"
    assert row(bleu, "LS") == ["40.50 ± 0.71 (n=2)", "38.50 ± 0.71 (n=2)", "35.50 ± 0.71 (n=2)"]
    chrf = T.build(rs, "chrf", only="multi30k_de_en")
    assert row(chrf, "LS")[0] == "60.50 ± 0.71 (n=2)"
    assert row(chrf, "LABO τ=1.15") == ["–", "–", "–"]  # an older result without chrF: no crash, no number
    assert "`nrefs:1|case:lc|eff:yes|nc:6|nw:0|space:no|version:2.6.0`" in chrf


def test_results_of_unfinished_training_are_marked():
    text = T.build([m30k("ls", 1, 40.0, completed=False), m30k("ce", 1, 38.0)], only="multi30k_de_en")
    assert row(text, "LS")[0] == "40.00 (n=1) ‡" and row(text, "Transformer (CE)")[0] == "38.00 (n=1)"
    assert "‡ includes results of runs whose training had not completed" in text


def test_runs_stopped_before_their_rule_are_marked_and_a_run_found_twice_is_refused():
    capped = m30k("ls", 2, 41.0)
    capped["train"] = {"stopping": {"converged": False, "cap_reached": True}}
    converged = m30k("ls", 1, 40.0)
    converged["train"] = {"stopping": {"converged": True}}
    text = T.build([converged, capped, m30k("ce", 1, 38.0)], only="multi30k_de_en")
    assert row(text, "LS")[0] == "40.50 ± 0.71 (n=2) §" and row(text, "Transformer (CE)")[0] == "38.00 (n=1)"
    assert "§ includes runs that stopped before their stopping rule said they had converged" in text
    # LABO at its default τ, written by train without --tau (tau None) and by compare (tau 1.15): one run
    twice = [dict(m30k("labo", 1, 40.0), _path="labo/seed1.json"),
             dict(m30k("labo", 1, 40.0, tau=1.15), _path="labo-tau1.15/seed1.json")]
    with pytest.raises(UsageError, match=r"labo-tau1.15/seed1.json and labo/seed1.json are the same run "
                                         r"\(multi30k_de_en LABO τ=1.15 seed 1\)"):
        T.build(twice)


def test_significance_lines_compare_methods_with_the_same_seeds(tmp_path):
    from labo_fairseq.scoring import stats as S

    refs = [f"w{i} a b c d e f g {i % 5}" for i in range(200)]
    m = S.metric("bleu")
    rs = []
    for method, cut, seeds in (("ce", 3, (1, 2)), ("ls", 1, (1, 2)), ("labo", 1, (1,))):
        for seed in seeds:
            r = m30k(method, seed, 40.0, tau=1.15 if method == "labo" else None)
            stats = S.sentence_stats(m, [" ".join(x.split()[:-cut - seed % 2]) for x in refs], refs)
            path = tmp_path / f"{method}{seed}.json"
            (tmp_path / f"{method}{seed}.stats.json").write_text(json.dumps({"directions": {k: stats for k in r["directions"]}}))
            r["_path"], r["sentence_stats"] = str(path), f"{method}{seed}.stats.json"
            rs.append(r)
    text = T.build(rs, only="multi30k_de_en", significance=True)
    ls_ce = next(ln for ln in text.splitlines() if ln.startswith("- LS − Transformer (CE), test_2016_flickr"))
    assert re.search(r"Δ \+\d+\.\d\d BLEU, 95% CI \[\+\d+\.\d\d, \+\d+\.\d\d\], p < 0\.001", ls_ce), ls_ce
    assert "seeds 1, 2" in ls_ce
    labo = next(ln for ln in text.splitlines() if ln.startswith("- LABO τ=1.15 − LS, test_2016_flickr"))
    assert "not tested (seeds [1, 2] vs [1] differ)" in labo


def test_command_reads_a_results_tree_and_never_overwrites_its_output(tmp_path):
    res = tmp_path / "results" / "iwslt14_de_en" / "ls"
    res.mkdir(parents=True)
    for s, b in ((1, 34.1), (2, 34.3)):
        (res / f"seed{s}.json").write_text(json.dumps(result("iwslt14_de_en", "ls", s, {"de-en": b})))
    (tmp_path / "results" / "notes.json").write_text("[]")  # not a result: ignored

    def run(*args):
        return subprocess.run([sys.executable, "-m", "labo_fairseq", "tables", "--results", tmp_path / "results", *args],
                              cwd=REPO, capture_output=True, text=True)
    out = tmp_path / "tables.md"
    proc = run("--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "34.20 ± 0.14 (n=2)" in proc.stdout and out.read_text() == proc.stdout
    again = run("--out", out)
    assert again.returncode == 2 and "exists; --force" in again.stderr
    missing = subprocess.run([sys.executable, "-m", "labo_fairseq", "tables", "--results", tmp_path / "nope"],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "no such directory" in missing.stderr
