"""labo_fairseq.runtime (atomic files, lines, starting processes) and study.fairseq_tools (fairseq-generate)."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labo_fairseq.runtime.errors import InUse, InvalidFile, ToolError
from labo_fairseq.runtime.files import atomic_open, exclusive, read_json, read_json_if_exists, read_lines, write_json, write_lines
from labo_fairseq.runtime.processes import Child, output_of, run_logged, run_tool, stop
from labo_fairseq.study.fairseq_tools import (
    fairseq_command,
    generate_command,
    log_record,
    parse_generate,
    run_generate,
    validation_curve,
)
from tests.helpers import REPO


def test_atomic_open_leaves_no_output_when_the_writer_fails(tmp_path):
    out = tmp_path / "a" / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(out) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert not out.exists()
    write_lines(out, ["x\ry", "z"])  # only \n ends a line
    assert read_lines(out) == ["x\ry", "z"]


def test_write_json_is_atomic_and_round_trips(tmp_path):
    out = write_json(tmp_path / "d" / "r.json", {"ece": 0.25, "tokens": [1, 2]})
    assert json.loads(out.read_text()) == {"ece": 0.25, "tokens": [1, 2]} and out.read_text().endswith("}\n")
    with pytest.raises(TypeError):
        write_json(out, {"bad": object()})
    assert json.loads(out.read_text())["ece"] == 0.25  # the failed write left the old file whole


def test_read_json_names_a_missing_or_invalid_file(tmp_path):
    assert read_json_if_exists(tmp_path / "none.json", {}) == {}
    with pytest.raises(InvalidFile, match="no such file"):
        read_json(tmp_path / "none.json")
    (tmp_path / "cut.json").write_text('{"a": 1', encoding="utf-8")
    with pytest.raises(InvalidFile, match="not valid JSON"):
        read_json_if_exists(tmp_path / "cut.json", {})


def test_a_lock_is_held_by_its_holder_and_the_children_given_it_and_ends_with_them(tmp_path):
    run = tmp_path / "runs" / "seed1"
    with exclusive(run, "run seed1") as fd:
        with pytest.raises(InUse, match="run seed1 is in use by another process: let it finish, or stop it first"):
            with exclusive(run, "run seed1"):
                pass
        child = Child(["sleep", "60"], tmp_path / "sleep.log", keep_fds=(fd,))
    try:
        with pytest.raises(InUse):  # the holder is gone, its child holds on
            with exclusive(run, "run seed1"):
                pass
    finally:
        child.proc.kill()
        child.wait()
    with exclusive(run, "run seed1"):  # the last holder gone, killed or not: free, and no file left
        pass
    assert list(run.iterdir()) == []


def test_a_filesystem_without_locks_is_worked_on_unguarded_and_said_so(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.warns(UserWarning, match=r"cannot be locked \(No locks available\): a second process on it is not"):
        with exclusive(tmp_path / "run", "run") as fd:
            assert fd >= 0


def test_log_record_reads_fairseqs_json_records_only():
    assert log_record('2026-01-01 | INFO | valid | {"epoch": 2, "valid_bleu": "30.1"}') == \
        ("valid", {"epoch": 2, "valid_bleu": "30.1"})
    assert log_record('INFO:train_inner:{"num_updates": "40"}') == ("train_inner", {"num_updates": "40"})
    assert log_record('x | INFO | train | {"epoch": 1}\n') == ("train", {"epoch": 1})
    for other in ('x | INFO | fairseq_cli.train | begin validation on "valid" subset',
                  'x | INFO | valid | {"epoch": 2, "valid_', 'INFO:fairseq.trainer:{"a": 1}'):
        assert log_record(other) is None


def test_validation_curve_is_the_run_as_it_stands_after_resumes(tmp_path):
    """A process stopped after logging a validation whose state it did not save: the resumed one
    validates those updates again, and its row replaces the earlier; validations within an epoch
    (``--validate-interval-updates``) all stay."""
    def valid(epoch, updates, bleu):
        return f'x | INFO | valid | {{"epoch": {epoch}, "valid_bleu": "{bleu}", "valid_num_updates": "{updates}"}}'

    log = tmp_path / "train.log"
    write_lines(log, [valid(1, 50, 10), valid(1, 100, 12), valid(2, 200, 15), valid(3, 300, 14),  # stopped here
                      "x | INFO | fairseq.trainer | loaded checkpoint checkpoint_last.pt (epoch 2 @ 200 updates)",
                      valid(3, 300, 16), valid(4, 400, 17)])
    assert [(r["epoch"], r["updates"], r["bleu"]) for r in validation_curve(log)] == \
        [(1, 50, 10.0), (1, 100, 12.0), (2, 200, 15.0), (3, 300, 16.0), (4, 400, 17.0)]


def test_fairseq_without_its_console_script_runs_as_its_module_by_name(tmp_path, monkeypatch):
    """Where ``fairseq-train`` is not beside the interpreter, the command still imports
    ``fairseq_cli.train`` by its name (``python -m`` would run it as ``__main__``, which the plugin's
    fixes to that module do not reach)."""
    cli = tmp_path / "site" / "fairseq_cli"
    cli.mkdir(parents=True)
    (cli / "__init__.py").write_text("")
    (cli / "train.py").write_text("def cli_main():\n    print(__name__)\n    return 0\n")
    python = sys.executable
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # no fairseq-train beside it
    cmd = fairseq_command("train")
    assert cmd[0] == sys.executable and "-m" not in cmd
    done = subprocess.run([python, *cmd[1:]], env={**os.environ, "PYTHONPATH": str(cli.parent)}, text=True,
                          capture_output=True, check=True)
    assert done.stdout == "fairseq_cli.train\n"


def test_parse_generate_reads_every_kind_of_line():
    g = parse_generate("S-1\tein haus\nT-1\ta house\nH-1\t-0.3\ta home\nD-1\t-0.3\ta home\nP-1\t-0.5 -0.1\n"
                       "S-0\tja\nT-0\tyes\nH-0\t-0.1\tyes\nP-0\t-0.1\n"
                       "Generate test with beam=5: BLEU4 = 50.00, 60/50/40/30 (BP=1.000)\n")
    assert g.ordered(g.hypothesis) == ["yes", "a home"] and g.reference[1] == "a house"
    assert g.positional_scores[1] == [-0.5, -0.1] and g.bleu_line.startswith("Generate test")


def test_run_tool_names_the_failure_and_keeps_the_log(tmp_path):
    log = tmp_path / "tool.log"
    with pytest.raises(ToolError, match=r"failed \(exit 3\) \(log: .*tool.log\):\nboom"):
        run_tool([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log=log)
    assert log.read_text() == "boom\n"
    assert run_tool([sys.executable, "-c", "print(1)"]).stdout == "1\n"


def test_run_tool_appends_and_echoes_when_asked(tmp_path, capfd):
    log = tmp_path / "job.log"
    log.write_text("+ train\n")
    proc = run_tool([sys.executable, "-c", "print('second')"], log=log, append=True, echo=True)
    assert log.read_text() == "+ train\nsecond\n" and proc.stdout == log.read_text()
    assert capfd.readouterr().out == "second\n"  # echoed as it came
    run_tool([sys.executable, "-c", "print('third')"], log=log)  # without append: this run's output only
    assert log.read_text() == "third\n"


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    child = Child([sys.executable, "-c", code], tmp_path / "c.log")
    for _ in range(100):
        if "ready" in child.tail():
            break
        time.sleep(0.1)
    t0 = time.time()
    stop([child], grace=1)
    assert child.returncode == -signal.SIGKILL and time.time() - t0 < 10
    assert child.failure("stubborn").startswith(f"stubborn failed (exit {-signal.SIGKILL}) (log: {tmp_path / 'c.log'}):\nready")


def test_run_logged_stops_the_others_when_one_fails(tmp_path):
    t0 = time.time()
    status = run_logged([[sys.executable, "-c", "import time; time.sleep(60)"],
                         [sys.executable, "-c", "import sys; sys.exit(5)"]], [tmp_path / "a", tmp_path / "b"])
    assert status == 5 and time.time() - t0 < 30


def test_sigterm_stops_the_children_too(tmp_path):
    """A scheduler's SIGTERM to the command must not leave fairseq running on its own."""
    pid_file = tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from labo_fairseq.runtime.processes import run_logged
        run_logged([["bash", "-c", "echo $$ > {pid_file}; exec sleep 60"]], [Path({str(tmp_path / 'log')!r})])
    """)
    parent = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    child = int(pid_file.read_text())
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def _lines(text):
    """The S/T/H/D/P lines and the BLEU line: what a run's output means (timestamps aside)."""
    return [ln for ln in text.splitlines() if ln[:2] in ("S-", "T-", "H-", "D-", "P-") or ln.startswith("Generate ")]


def test_run_generate_in_process_prints_what_the_fairseq_generate_child_prints(data_bin, tiny_checkpoint):
    cmd = generate_command(Path("."), tiny_checkpoint, "test", beam=3, max_tokens=2000)  # the data, relative to cwd
    child = run_tool(cmd, cwd=data_bin)
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    here = run_generate(cmd, cwd=data_bin)
    assert (root.level, list(root.handlers)) == before  # generate's basicConfig is not left behind
    assert len([ln for ln in _lines(child.stdout) if ln.startswith("H-")]) == 50
    assert _lines(here.stdout) == _lines(child.stdout)
    assert "fairseq_cli.generate | Translated 50 sentences" in here.stdout  # fairseq's log where a child puts it
    # a second test set in the same process: fairseq's state from the first does not leak into it
    valid = generate_command(data_bin, tiny_checkpoint, "valid", beam=3, max_tokens=2000)
    assert _lines(run_generate(valid).stdout) == _lines(run_tool(valid).stdout)


def test_run_generate_names_the_failure_with_its_output(data_bin, tiny_checkpoint):
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    with pytest.raises(ToolError, match=r"fairseq-generate failed \(exit 2\):\n(.|\n)*unrecognized arguments: --no-such"):
        run_generate([*generate_command(data_bin, tiny_checkpoint), "--no-such"])
    with pytest.raises(ToolError, match=r"failed \(exit 1\):\n(.|\n)*no-such-subset"):
        run_generate(generate_command(data_bin, tiny_checkpoint, "no-such-subset"))
    assert (root.level, list(root.handlers)) == before
    here = os.getcwd()
    with pytest.raises(ToolError):  # a failure in another directory leaves this one the working directory
        run_generate(generate_command(data_bin, tiny_checkpoint, "no-such-subset"), cwd=data_bin)
    assert os.getcwd() == here
    with pytest.raises(ValueError, match="not a fairseq-generate command line"):
        run_generate([sys.executable, "-c", "print(1)"])


def test_output_of_is_stdout_or_none():
    assert output_of([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]) == "out\n"
    assert output_of([sys.executable, "-c", "raise SystemExit(3)"]) is None
    assert output_of(["labo-no-such-program"]) is None
    assert output_of([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5) is None


def test_python_value_is_the_last_printed_json_or_one_clear_error():
    from labo_fairseq.runtime.errors import ToolError
    from labo_fairseq.runtime.processes import python_value

    assert python_value("import json; print('warming up'); print(json.dumps([1, 2.5, None]))") == [1, 2.5, None]
    with pytest.raises(ToolError, match="exit 1"):
        python_value("raise RuntimeError('probe failed')")
    with pytest.raises(ToolError, match="a child interpreter's output is not valid JSON"):
        python_value("print('[1, ')")
