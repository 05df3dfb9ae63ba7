"""The large-vocabulary benchmark runs end to end on small sizes and prints its ratios (its numbers
are measurements, never asserted)."""

import pytest

from tests.helpers import cli


@pytest.mark.slow
def test_the_vocabulary_benchmark_prints_every_method_and_the_ratios(tmp_path):
    proc = cli("bench-vocab", "--vocab", "300", "--tokens", "64", "--dim", "16", "--dtype", "fp32", "--repeats", "1",
               "--device", "cpu", "--json", tmp_path / "rows.json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for method in ("ours unfused LS", "ours fused LABO", "torch cross_entropy(ls=0.1)"):
        assert f"| 300 | {method} | " in proc.stdout
    ratios = proc.stdout.split("ours fused LABO / ours unfused LS")[1]
    assert "| 300 | " in ratios and ratios.count("x |") == 3  # wall time, CPU time, peak
    assert (tmp_path / "rows.json").is_file()


@pytest.mark.slow
def test_methods_picks_the_rows(tmp_path):
    proc = cli("bench-vocab", "--vocab", "300", "--tokens", "64", "--dim", "16", "--dtype", "fp32", "--repeats", "1",
               "--device", "cpu", "--methods", "ours unfused LS", "ours fused LABO", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 300 | ours fused LABO | " in proc.stdout and "LabelSmoother" not in proc.stdout
    assert "| 300 | " in proc.stdout.split("ours fused LABO / ours unfused LS")[1]
