from labo_fairseq.study.analysis.plots import seed_band


def test_the_band_averages_each_seed_once_an_epoch_and_stops_at_the_first_seeds_stop():
    seeds = {
        # a validation mid-epoch (--save-interval-updates) and at its end: the end's value stands
        "1": [[1, 10.0], [2, 19.0], [2, 20.0], [3, 30.0], [4, 40.0]],
        "2": [[1, 12.0], [2, 22.0], [3, 32.0]],  # stopped at epoch 3
    }
    band = seed_band(seeds)
    assert band["epochs"] == [1, 2, 3]
    assert band["mean"] == [11.0, 21.0, 31.0]
    assert band["low"] == [10.0, 20.0, 30.0] and band["high"] == [12.0, 22.0, 32.0]


def test_two_rows_of_one_seed_in_an_epoch_are_not_taken_for_two_seeds():
    # seed 2 stopped at epoch 1: epoch 2 has two rows of seed 1 only, and is out of the band
    band = seed_band({"1": [[1, 10.0], [2, 15.0], [2, 20.0]], "2": [[1, 12.0]]})
    assert band["epochs"] == [1] and band["mean"] == [11.0]
    assert seed_band({}) == {"epochs": [], "mean": [], "low": [], "high": []}
