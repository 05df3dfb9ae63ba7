"""``--loss-chunk-tokens``: every criterion's fused path (the decoder's features and output projection
into :func:`labo_fairseq.losses.linear_loss`) gives the values, logged statistics and gradients of
its ordinary path, with padding, a prefix ignored and chunks that do not divide the tokens."""

import pytest
import torch

pytest.importorskip("fairseq", reason="fairseq is not installed (scripts/install.sh)")

from tests.helpers import REPO, write_dictionaries
from tests.plugin.test_criteria import build

BSZ, TGT_LEN, DIM = 3, 7, 6


@pytest.fixture(scope="module")
def dictionaries(tmp_path_factory):
    return write_dictionaries(tmp_path_factory.mktemp("dict"), 9)


class FeatureModel(torch.nn.Module):
    """fairseq's model API for a criterion: fixed features, a linear output projection (no bias)."""

    def __init__(self, features, vocab):
        super().__init__()
        self.features = torch.nn.Parameter(features)
        self.decoder = torch.nn.Module()
        self.decoder.output_projection = torch.nn.Linear(features.size(-1), vocab, bias=False)

    def forward(self, features_only=False, **net_input):
        x = self.features * 1.0
        return (x if features_only else self.decoder.output_projection(x)), None

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return torch.log_softmax(net_output[0].float(), -1)

    def get_targets(self, sample, net_output):
        return sample["target"]


def sample_and_model(vocab, pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(pad + 3, vocab, (BSZ, TGT_LEN), generator=g)
    target[0, -3:] = pad
    target[2, -1:] = pad
    torch.manual_seed(seed)
    model = FeatureModel(torch.randn(BSZ, TGT_LEN, DIM, generator=g), vocab)
    return model, {"net_input": {}, "target": target, "ntokens": int(target.ne(pad).sum()), "nsentences": BSZ}


CASES = [
    ("label_smoothed_ce", ["--label-smoothing", "0.1"]),
    ("label_smoothed_ce", ["--label-smoothing", "0"]),
    ("label_smoothed_labo", ["--labo-warmup-updates", "0", "--labo-tau", "1.25"]),
    ("label_smoothed_labo", ["--labo-warmup-updates", "100"]),  # in its warm-up: LS
    ("label_smoothed_labo", ["--labo-warmup-updates", "0", "--labo-alpha", "0.2"]),
    ("confidence_penalty", ["--cp-beta", "0.3"]),
    ("focal_loss", ["--focal-gamma", "2"]),
    ("anti_focal_loss", ["--anti-focal-gamma", "1", "--anti-focal-alpha", "0.5"]),
]


@pytest.mark.parametrize("name,flags", CASES, ids=[f"{n}{' '.join(f)}" for n, f in CASES])
@pytest.mark.parametrize("prefix", [0, 2])
def test_fused_equals_unfused(dictionaries, name, flags, prefix):
    runs = []
    for chunk in (0, 4):
        task, crit = build(dictionaries, "--criterion", name, "--ignore-prefix-size", str(prefix),
                           "--loss-chunk-tokens", str(chunk), *flags)
        model, sample = sample_and_model(len(task.target_dictionary), task.target_dictionary.pad())
        loss, size, logs = crit(model, sample)
        loss.backward()
        runs.append((loss, size, logs, model.features.grad, model.decoder.output_projection.weight.grad))
    (l0, s0, g0, fh0, fw0), (l1, s1, g1, fh1, fw1) = runs
    assert s0 == s1 and torch.allclose(l0, l1, rtol=1e-5) and torch.allclose(g0["nll_loss"], g1["nll_loss"], rtol=1e-5)
    assert torch.allclose(fh0, fh1, rtol=1e-4, atol=1e-6) and torch.allclose(fw0, fw1, rtol=1e-4, atol=1e-6)
    for key in set(g0) - {"loss", "nll_loss"}:
        assert torch.allclose(torch.as_tensor(g0[key]).double(), torch.as_tensor(g1[key]).double(), rtol=1e-5), key


def test_bad_uses_of_the_fused_path_fail_at_startup(dictionaries):
    with pytest.raises(ValueError, match=r"--loss-chunk-tokens must be in \[0, inf\), got -1"):
        build(dictionaries, "--criterion", "label_smoothed_ce", "--loss-chunk-tokens", "-1")
    with pytest.raises(ValueError, match="--report-accuracy needs the logits"):
        build(dictionaries, "--criterion", "focal_loss", "--loss-chunk-tokens", "8", "--report-accuracy")
    task, crit = build(dictionaries, "--criterion", "focal_loss", "--loss-chunk-tokens", "8")
    model, sample = sample_and_model(len(task.target_dictionary), task.target_dictionary.pad())
    model.decoder.output_projection = torch.nn.Linear(DIM, len(task.target_dictionary), bias=True)
    with pytest.raises(ValueError, match="output layer is a linear map without bias"):
        crit(model, sample)


@pytest.mark.slow
def test_a_tiny_run_has_the_same_per_update_losses_fused_and_unfused(data_bin, tmp_path):
    from tests.helpers import TINY, fairseq, train_log

    logs = {}
    for chunk in (0, 96):
        proc = fairseq("train", data_bin, "--user-dir", REPO / "labo_fairseq", "--task", "translation", *TINY,
                       "--criterion", "label_smoothed_labo", "--labo-warmup-updates", "4", "--max-update", "10",
                       "--loss-chunk-tokens", chunk, "--save-dir", tmp_path / str(chunk), "--no-save")
        logs[chunk] = train_log(proc)
    assert sorted(logs[0]) == sorted(logs[96]) == list(range(1, 11))
    for update in range(1, 11):
        a, b = logs[0][update], logs[96][update]
        for key in ("loss", "nll_loss", "labo_alpha"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=2e-3, abs=2e-3), (update, key)
    assert float(logs[96][10]["labo_active"]) == 1 and float(logs[96][3]["labo_active"]) == 0
