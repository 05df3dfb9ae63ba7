"""labo_fairseq.scoring.stats: mean ± std, p-value precision, the per-seed tests against sacrebleu's own
PairedTest on real text, and the seed-aware bootstrap on synthetic systems."""

import gzip

import pytest

from labo_fairseq.scoring import stats as S
from tests.helpers import MULTI30K


def refs_2016():
    path = MULTI30K / "test_2016_flickr.en.gz"
    if not path.is_file():
        pytest.skip(f"real data not found at {path} (set LABO_SHARED_DATA)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def drop_every(lines, k, offset=0):
    """Each line without every k-th word: a degraded system whose damage differs per sentence."""
    return [" ".join(w for j, w in enumerate(line.split()) if (j + offset + i) % k) for i, line in enumerate(lines)]


def test_mean_std_and_text():
    assert S.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert S.mean_std([4.0]) == (4.0, None)
    assert S.mean_std_text([30.0, 31.0]) == "30.50 ± 0.71 (n=2)" and S.mean_std_text([]) == "–"


def test_p_values_are_shown_at_the_precision_of_their_samples():
    assert S.format_p(1 / 1001, 1000) == "< 0.001"
    assert S.format_p(0.0123, 1000) == "0.012"
    assert S.format_p(0.5, 10000) == "0.5000"
    assert S.format_p(1 / 101, 100) == "< 0.01"


@pytest.mark.parametrize("test_type", ["bs", "ar"])
def test_per_seed_tests_equal_sacrebleus_paired_test(test_type):
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    refs = refs_2016()
    a, b = drop_every(refs, 5), drop_every(refs, 5, 2)  # close systems: a p-value far from both ends
    samples = 1000 if test_type == "bs" else 2000
    _, ours = PairedTest([("A", a), ("B", b)], {"BLEU": BLEU(tokenize="none", force=True)}, [refs],
                         test_type=test_type, n_samples=samples)()
    m = S.metric("bleu")
    sa, sb = S.sentence_stats(m, a, refs), S.sentence_stats(m, b, refs)
    fn = S.paired_bootstrap if test_type == "bs" else S.paired_ar
    got = fn(m, sa, sb, samples=samples)
    base, system = ours["BLEU"]
    assert got["base"] == pytest.approx(base.score, abs=1e-4) and got["system"] == pytest.approx(system.score, abs=1e-4)
    assert got["p_value"] == pytest.approx(system.p_value, abs=1e-12)
    assert 0.05 < got["p_value"] < 0.95


def synthetic(n=300):
    refs = [f"w{i} a b c d e f g h {i % 7}" for i in range(n)]
    worse = [" ".join(r.split()[:-3]) for r in refs]  # every sentence loses its last three words
    return refs, worse


def test_identical_systems_give_p_one_and_a_zero_interval():
    refs, worse = synthetic()
    m = S.metric("bleu")
    st = S.sentence_stats(m, worse, refs)
    r = S.seed_bootstrap(m, [st, st, st], [st, st, st], samples=500)
    assert r["delta"] == 0 and r["ci95"] == [0, 0] and r["p_value"] == 1.0 and r["p"] == "1.000"


def test_a_system_better_on_every_sentence_is_significant_and_swapping_flips_the_sign():
    refs, worse = synthetic()
    m = S.metric("bleu")
    bad = [S.sentence_stats(m, worse, refs)] * 2 + [S.sentence_stats(m, [" ".join(r.split()[:-4]) for r in refs], refs)]
    good = [S.sentence_stats(m, refs, refs), S.sentence_stats(m, [" ".join(r.split()[:-1]) for r in refs], refs)]
    up = S.seed_bootstrap(m, bad, good, samples=1000)
    down = S.seed_bootstrap(m, good, bad, samples=1000)
    assert up["delta"] > 5 and up["p_value"] < 0.01 and up["p"] == "< 0.001"
    assert up["ci95"][0] > 0 and up["seeds"] == [3, 2]
    assert down["delta"] == pytest.approx(-up["delta"]) and down["ci95"][1] < 0 and down["p_value"] < 0.01


def test_the_seed_average_is_the_statistic():
    """Two seeds of B, one better and one worse than A by the same amount, average to no difference."""
    refs, worse = synthetic()
    m = S.metric("bleu")
    mid = S.sentence_stats(m, [" ".join(r.split()[:-2]) for r in refs], refs)
    r = S.seed_bootstrap(m, [mid], [S.sentence_stats(m, refs, refs), S.sentence_stats(m, worse, refs)], samples=300)
    expected = (r["system_scores"][0] + r["system_scores"][1]) / 2 - r["base_scores"][0]
    assert r["delta"] == pytest.approx(expected, abs=1e-3)


def test_test_sets_of_different_sizes_are_refused():
    refs, worse = synthetic()
    m = S.metric("bleu")
    with pytest.raises(ValueError, match="same test set"):
        S.seed_bootstrap(m, [S.sentence_stats(m, worse, refs)], [S.sentence_stats(m, worse[:10], refs[:10])])
    with pytest.raises(ValueError, match="not the same test set"):
        S.paired_bootstrap(m, S.sentence_stats(m, worse, refs), S.sentence_stats(m, worse[:10], refs[:10]))


def test_holm_adjusts_step_down_in_the_inputs_order():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone: 0.06
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.027, 0.845, 0.859]) == pytest.approx([0.081, 1.0, 1.0])  # clipped at 1
    assert S.holm([0.2]) == [0.2] and S.holm([]) == []


def test_the_permutation_test_over_seeds_is_exact_and_bounded_by_the_seeds():
    assert S.seed_permutation([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])["p_value"] == pytest.approx(2 / 252)  # the two extreme splits
    same = S.seed_permutation([39.5, 39.7, 39.9], [39.5, 39.7, 39.9])
    assert same["p_value"] == 1 and same["delta"] == 0 and same["splits"] == 20 and same["min_p"] == 0.1
    with pytest.raises(ValueError, match="at least one seed"):
        S.seed_permutation([], [1.0])


def test_the_permutation_test_over_seeds_equals_scipys_exact_one():
    stats = pytest.importorskip("scipy.stats")
    import numpy as np

    ls, labo = [39.81, 40.48, 40.12, 39.60, 40.05], [41.03, 39.93, 40.70, 40.31, 40.44]
    ours = S.seed_permutation(ls, labo)
    ref = stats.permutation_test((labo, ls), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                                 n_resamples=np.inf, alternative="two-sided")
    assert ours["delta"] == pytest.approx(ref.statistic, abs=1e-4) and ours["p_value"] == pytest.approx(ref.pvalue)
