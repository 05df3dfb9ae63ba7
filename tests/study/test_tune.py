"""labo-fairseq tune: the grid's points, their runs' roots, the table and the rule that chooses."""

import json

import pytest

from labo_fairseq.study import tune
from labo_fairseq.study.protocol import RUN_MARKER, Roots
from tests.helpers import cli


def test_the_declared_grid_has_every_combination_in_order():
    g = tune.grid_config("multi30k_de_en_converged")
    points = tune.points(g)
    assert [p.name for p in points] == ["dropout0.1-lr1e-3", "dropout0.1-lr2e-3", "dropout0.3-lr1e-3",
                                        "dropout0.3-lr2e-3"]
    assert dict(points[1].args) == {"--dropout": "0.1", "--lr": "2e-3"}
    with pytest.raises(ValueError, match="unknown grid 'nope'"):
        tune.grid_config("nope")


def test_dry_run_prints_one_train_command_per_point_in_its_own_runs_root(tmp_path):
    proc = cli("tune", "multi30k_de_en_converged", "--root", tmp_path, "--dry-run")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 4 and not any(tmp_path.iterdir())
    assert lines[0].endswith(f"--runs-root {tmp_path}/grids/multi30k_de_en_converged/dropout0.1-lr1e-3 -- --dropout 0.1 "
                             "--lr 1e-3")


def fake_run(t, point, bleus, completed=True, cap=10):
    rd = t.run_dir(point)
    rd.mkdir(parents=True)
    cmd = ["fairseq-train", "d", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
           "--patience", "2", "--max-epoch", str(cap)]
    rec = {"command": cmd, **({"completed": "now"} if completed else {})}
    (rd / RUN_MARKER).write_text(json.dumps(rec))
    (rd / "train.log").write_text("".join(
        f'x | INFO | valid | {{"epoch": {e}, "valid_bleu": "{b}", "valid_num_updates": "{e * 10}"}}\n'
        for e, b in enumerate(bleus, 1)))


def test_the_grid_chooses_the_best_validation_point_only_once_every_point_finished(tmp_path):
    t = tune.Tune("multi30k_de_en_converged", Roots.from_options(tmp_path))
    p = t.points
    fake_run(t, p[0], [10, 20, 19, 18])
    fake_run(t, p[1], [10, 25, 24, 23])
    fake_run(t, p[2], [10, 22, 21], completed=False, cap=3)
    rep = t.report()
    assert rep["chosen"] is None and [r["finished"] for r in rep["rows"]] == [True, True, False, False]
    assert rep["rows"][1]["best"] == 25 and rep["rows"][1]["best_epoch"] == 2 and rep["rows"][1]["converged"]
    fake_run(t, p[3], [10, 30, 31], cap=3)  # the best, but the cap stopped it: finished, not converged
    for q in p:
        if t.run_dir(q).joinpath(RUN_MARKER).is_file():
            rec = json.loads(t.run_dir(q).joinpath(RUN_MARKER).read_text())
            t.run_dir(q).joinpath(RUN_MARKER).write_text(json.dumps({**rec, "completed": "now"}))
    rep = tune.write_report(t)
    assert rep["chosen"] == "dropout0.3-lr2e-3"
    md = (tmp_path / "results" / "grids" / "multi30k_de_en_converged.md").read_text()
    assert "| dropout0.3-lr2e-3 **(chosen)** | 31.00 | 3 | 3 | no: reached the cap |" in md


def test_a_point_that_stopped_before_its_rule_or_cap_is_trained_on(tmp_path):
    # what a resumed fairseq could leave: completed, 1 of 2 validations without improvement, below the cap
    t = tune.Tune("multi30k_de_en_converged", Roots.from_options(tmp_path))
    p = t.points[0]
    fake_run(t, p, [10, 20, 19])
    assert t.finish(p) and not t.done(p) and not t.report()["rows"][0]["finished"]
    (t.run_dir(p) / "train.log").write_text((t.run_dir(p) / "train.log").read_text() +
                                             'x | INFO | valid | {"epoch": 4, "valid_bleu": "18"}\n')
    assert t.finish(p) and t.done(p)


def test_finished_points_kept_elsewhere_are_not_trained_again(tmp_path):
    # the records committed with the code (--results-root), the work directory with the checkpoints lost
    kept = tune.Tune("multi30k_de_en_converged", Roots.from_options(tmp_path / "old"))
    fake_run(kept, kept.points[1], [10, 25, 24, 23])
    assert kept.finish(kept.points[1])
    (tmp_path / "checkout").mkdir()
    (tmp_path / "old" / "results").rename(tmp_path / "checkout" / "results")
    proc = cli("tune", "multi30k_de_en_converged", "--root", tmp_path / "new", "--results-root",
               tmp_path / "checkout" / "results", "--dry-run")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3 and "dropout0.1-lr2e-3" not in proc.stdout
    t = tune.Tune("multi30k_de_en_converged", Roots.from_options(tmp_path / "new", results=tmp_path / "checkout" / "results"))
    assert [t.done(p) for p in t.points] == [False, True, False, False]
