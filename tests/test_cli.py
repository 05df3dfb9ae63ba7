"""The labo-fairseq command: its listing, unknown names, and what it loads: tables and every
--dry-run run without importing torch or fairseq (a login node, a fresh machine)."""

import subprocess
import sys

import pytest

from tests.helpers import MULTI30K, REPO, cli

LIGHT = [
    ["tables", "--help"],
    ["train", "multi30k_de_en", "ls", "1", "--dry-run"],
    ["train", "multi30k_de_en", "kd", "1", "--teacher", "ls/seed1", "--dry-run"],
    ["evaluate", "iwslt17_multi", "labo", "1", "--dry-run"],
    ["compare", "--dry-run", "--source", "x"],
    ["sweep", "--table", "2", "--launcher", "local", "--dry-run"],
    ["prepare", "multi30k.de-en", "--dry-run", "--offline", "--source", str(MULTI30K)],
    ["distill-data", "multi30k_de_en", "ls/seed1", "--dry-run"],
    ["gpu-check", "--dry-run"],
    ["gpu-allocation", "--minutes", "9", "--out", "out", "--dry-run"],
]


@pytest.mark.parametrize("args", LIGHT, ids=lambda a: " ".join(a[:2]))
def test_tables_and_dry_runs_import_neither_torch_nor_fairseq(args, tmp_path):
    code = ("import sys\nfrom labo_fairseq.cli import main\ntry:\n    status = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    status = e.code\n"
            "print('LOADED', [m for m in ('torch', 'fairseq') if m in sys.modules], file=sys.stderr)\n"
            "sys.exit(status or 0)")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert "LOADED []" in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]  # a dry run that dies on an argparse error fails here


def test_listing_and_unknown_names():
    listing = cli("--help")
    assert listing.returncode == 0
    for name in ("prepare", "train", "evaluate", "tables", "compare", "sweep", "distill-data", "gpu-check",
                 "penultimate", "inference-calibration"):
        assert name in listing.stdout
    bad = cli("nope")
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
    bad = cli("analyze", "nope")
    assert bad.returncode == 2 and "unknown analysis 'nope'" in bad.stderr
    assert cli("user-dir").stdout.strip() == str(REPO / "labo_fairseq")


def test_an_interrupted_command_says_how_to_resume_in_one_line(monkeypatch, capsys):
    from labo_fairseq import cli as C

    class Interrupted:
        @staticmethod
        def main(argv, prog):
            raise KeyboardInterrupt

    monkeypatch.setattr(C.importlib, "import_module", lambda name: Interrupted)
    assert C.main(["train", "x", "ls", "1"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "run the same command again to resume" in err
