"""The committed results/: every record says how it was made (command, commit, hardware, the
signature of every score), names no absolute path of the machine that ran it, and the converged
study's tables in docs/study.md (its runs, its tuning grid) say what its records say."""

import json
import re

import pytest

from tests.helpers import REPO

RESULTS = REPO / "results"
RECORDS = sorted(RESULTS.rglob("*.json"))
# a run's record: seedS.json beside its hypotheses (not its sentence statistics)
RUNS = [p for p in RECORDS if re.fullmatch(r"seed\d+\.json", p.name)]
CONVERGED = sorted((RESULTS / "multi30k_de_en_converged").glob("*/seed*.json"))
CONVERGED = [p for p in CONVERGED if p in RUNS]
# an absolute path: a token starting with "/" after a separator (a path from the home, "~/...",
# reads the same on any machine; so does the null device)
ABSOLUTE = re.compile(r"(?:^|[\s=\"'])(?!/dev/null)/[A-Za-z]")
TEST_SETS = ("de-en", "de-en.test_2017_flickr", "de-en.test_2017_mscoco")
METHOD_NAMES = {"ce": "CE", "ls": "LS", "labo-tau1.15": "LABO"}


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def test_there_are_records():
    assert len(RUNS) >= 10 and CONVERGED


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_record_names_no_absolute_path(path):
    found = [s for s in strings(json.loads(path.read_text(encoding="utf-8"))) if ABSOLUTE.search(s)]
    assert not found, found[:3]


@pytest.mark.parametrize("path", RUNS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_run_record_says_how_it_was_made(path):
    record = json.loads(path.read_text(encoding="utf-8"))
    for stage in ("train", "evaluate"):
        assert re.fullmatch(r"[0-9a-f]{40}", record[stage]["commit"]), stage
        assert record[stage]["hardware"]["cpu_cores"] >= 1, stage
    assert record["train"]["command"][0] == "fairseq-train"
    for name, scores in record["directions"].items():
        assert scores["command"][0] == "fairseq-generate", name
        assert scores["sacrebleu_signature"].startswith("nrefs:1|"), name
        assert scores["chrf_signature"].startswith("nrefs:1|"), name
        assert scores["paper_metric"]["signature"].startswith("nrefs:1|"), name
        assert (path.parent / scores["hypotheses"]).is_file(), name


@pytest.mark.parametrize("path", CONVERGED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_converged_run_was_stopped_by_its_rule(path):
    record = json.loads(path.read_text(encoding="utf-8"))
    stop = record["train"]["stopping"]
    by_rule = stop["validations_since_best"] >= stop["patience"] and not stop["cap_reached"]
    assert stop["converged"] == by_rule
    assert stop["last_epoch"] - stop["best_epoch"] >= stop["validations_since_best"]
    # the checkpoint evaluated is the one the rule kept
    assert (record["validation"]["epoch"], record["validation"]["bleu"]) == (stop["best_epoch"], stop["best"])
    epochs = [r["epoch"] for r in record["validation_curve"]]
    assert epochs == list(range(1, stop["last_epoch"] + 1))  # one validation an epoch, none repeated by a resume


def test_study_table_says_what_the_records_say():
    """Each finished run has its row in docs/study.md's table of the converged study, with its
    numbers; and no row stands there without a record."""
    text = (REPO / "docs" / "study.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| (?:CE|LS|LABO) seed \d+ \|.*\|$", text, flags=re.M))
    expected = set()
    for path in CONVERGED:
        record = json.loads(path.read_text(encoding="utf-8"))
        stop = record["train"]["stopping"]
        test = " / ".join(f"{record['directions'][name]['bleu']:.2f}" for name in TEST_SETS)
        converged = "yes" if stop["converged"] else "no (§)"
        expected.add(
            f"| {METHOD_NAMES[path.parent.name]} seed {record['seed']} | {stop['best']:.2f} | "
            f"{stop['best_epoch']} | {stop['last_epoch']} | {converged} | {test} |"
        )
    assert rows == expected, (sorted(expected - rows), sorted(rows - expected))


def test_grid_table_says_what_the_records_say():
    """docs/study.md's table of the tuning grid: a row per point with its record's numbers, the
    grid's choice in bold."""
    text = (REPO / "docs" / "study.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| \**dropout [\d.]+, lr [\de-]+.*\|$", text, flags=re.M))
    grid = json.loads((RESULTS / "grids" / "multi30k_de_en_converged.json").read_text(encoding="utf-8"))
    expected = set()
    for path in sorted((RESULTS / "grids" / "multi30k_de_en_converged").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        stop = record["plateau"]
        cells = [
            f"dropout {record['args']['--dropout']}, lr {record['args']['--lr']}",
            f"{stop['best']:.2f}",
            str(stop["best_epoch"]),
            str(stop["last_epoch"]),
            "yes" if stop["converged"] else "no (§)",
        ]
        if record["point"] == grid["chosen"]:
            cells = [f"**{cells[0]} (chosen)**", f"**{cells[1]}**", *cells[2:]]
        expected.add("| " + " | ".join(cells) + " |")
    assert rows == expected, (sorted(expected - rows), sorted(rows - expected))
