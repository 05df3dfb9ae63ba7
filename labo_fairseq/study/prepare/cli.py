"""Prepare a dataset of the paper as fairseq's recipes do: text under --out, binarized data under --dest.

Datasets (one binarized directory serves both directions of a pair):
  iwslt14.de-en     IWSLT'14 de<->en   (fairseq prepare-iwslt14.sh: Moses, lowercase, BPE 10k)
  iwslt14.fr-en     IWSLT'14 fr<->en   (same recipe)
  iwslt17.de_fr-en  IWSLT'17 {de,fr}->en multilingual (prepare-iwslt17-multilingual.sh: sentencepiece 16k)
  wmt14.en-de       WMT'14 en<->de     (prepare-wmt14en2de.sh: Moses -a, BPE 40k)
  multi30k.de-en    Multi30k task 1 de<->en, not in the paper: the quickstart's small real corpus (Moses, lowercase, BPE 5k)

Sources: by default the original archives are downloaded (checksums verified where published)
into --cache. Offline, pass --source DIR_OR_ARCHIVE (repeatable): a directory holding the archives
(or their members unpacked, .xz/.gz allowed), or an archive file. Re-running skips finished steps and
resumes an interrupted run; a finished dataset is left alone unless --force.

Examples:
  labo-fairseq prepare iwslt14.de-en
  labo-fairseq prepare iwslt14.de-en --source ~/Downloads/de-en.tgz --offline
  labo-fairseq prepare wmt14.en-de --source /data/wmt14_archives --workers 16
"""

import argparse
from pathlib import Path

from labo_fairseq.runtime.commandline import ArgumentParser
from labo_fairseq.study.prepare import NAMES, recipe
from labo_fairseq.study.prepare.common import Options
from labo_fairseq.study.prepare.sources import Sources
from labo_fairseq.study.protocol import _argtype, absolute, data_name


def main(argv=None, prog="labo-fairseq prepare"):
    ap = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=_argtype(data_name), help=f"one of {', '.join(NAMES)}, or a dataset config of "
                    "train (e.g. multi30k_de_en), which names its data")
    ap.add_argument("--root", type=Path, help="directory for data/, data-bin/ and downloads/ (default: the working directory)")
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="local archive or directory with archives / unpacked files (repeatable)")
    ap.add_argument("--offline", action="store_true", help="never download; fail naming the missing file")
    ap.add_argument("--cache", type=Path, help="download cache (default: ROOT/downloads)")
    ap.add_argument("--out", type=Path, help="text output directory (default: ROOT/data/DATASET)")
    ap.add_argument("--dest", type=Path, help="fairseq-preprocess output (default: ROOT/data-bin/DATASET)")
    ap.add_argument("--workers", type=int, default=None, help="processes for tokenization/BPE/binarization (default: all cores)")
    ap.add_argument("--bpe-merges", type=int, default=None,
                    help="override BPE merges (sentencepiece vocabulary for iwslt17); for small tests only, "
                         "the paper's counts are then not checked")
    ap.add_argument("--force", action="store_true", help="delete a previous output of this tool and rebuild")
    ap.add_argument("--dry-run", action="store_true", help="print the steps, read and write nothing")
    args = ap.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.bpe_merges is not None and args.bpe_merges < 1:
        ap.error("--bpe-merges must be >= 1")
    for p in args.source:
        if not p.exists():
            ap.error(f"--source {p}: no such file or directory")
    root = absolute(args.root or ".")
    opt = Options(
        sources=Sources([absolute(p) for p in args.source], absolute(args.cache) if args.cache else root / "downloads",
                        args.offline),
        out=absolute(args.out) if args.out else root / "data" / args.dataset,
        dest=absolute(args.dest) if args.dest else root / "data-bin" / args.dataset,
        force=args.force, dry_run=args.dry_run, bpe_merges=args.bpe_merges,
    )
    if args.workers:
        opt.workers = args.workers
    ws = recipe(args.dataset)(opt)
    if not args.dry_run:
        print(f"{args.dataset}: text in {opt.out}, binarized in {opt.dest}, manifest {ws.manifest_path}")
    return 0
