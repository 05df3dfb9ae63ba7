"""The penultimate-layer projection and cluster numbers on synthetic activations."""

import math

import pytest
import torch

from labo_fairseq.study.analysis.penultimate import cluster_stats, content_tokens, plane_basis, project


def _templates(d=16, seed=0):
    return torch.randn(3, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def test_projection_recovers_known_coordinates_exactly():
    w = _templates()
    origin, basis = plane_basis(w)
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(origin, w[0])
    # points built as known coordinates in the basis, plus a component orthogonal to the plane
    coords = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    normal = torch.randn(50, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    normal = normal - (normal @ basis.T) @ basis
    x = origin + coords @ basis + normal
    assert torch.allclose(project(x, origin, basis), coords, atol=1e-10)
    # the templates land where the Gram–Schmidt construction puts them
    wxy = project(w, origin, basis)
    u, v = w[1] - w[0], w[2] - w[0]
    assert torch.allclose(wxy[0], torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert wxy[1, 0] == pytest.approx(float(u.norm())) and abs(float(wxy[1, 1])) < 1e-10
    assert float(wxy[2].norm()) == pytest.approx(float(v.norm()))  # w_3 lies in the plane: no length lost
    assert float(wxy[2, 0]) == pytest.approx(float(u @ v / u.norm()))


def test_convex_combinations_of_templates_project_to_the_same_combination():
    w = _templates(d=8, seed=3)
    origin, basis = plane_basis(w)
    lam = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.3, 0.5], [-1.0, 2.0, 0.0]], dtype=torch.float64)
    wxy = project(w, origin, basis)
    assert torch.allclose(project(lam @ w, origin, basis), lam @ wxy, atol=1e-10)


def test_collinear_templates_are_refused():
    w = torch.tensor([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]])
    with pytest.raises(ValueError, match="collinear"):
        plane_basis(w)
    with pytest.raises(ValueError, match="3 templates"):
        plane_basis(w[:2])


def test_cluster_stats_on_a_regular_triangle():
    # class c: points at distance r around template c in the plane (an equilateral triangle of side 1)
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    r = 0.1
    ring = torch.tensor([[r, 0], [-r, 0], [0, r], [0, -r]], dtype=torch.float64)
    x = torch.cat([w[c] + ring for c in range(3)])
    labels = torch.arange(3).repeat_interleave(4)
    st = cluster_stats(x, labels, w, ["a", "b", "c"])
    for c in "abc":
        assert st["classes"][c]["count"] == 4
        assert st["classes"][c]["mean_distance_to_template"] == pytest.approx(r)
        assert st["classes"][c]["spread"] == pytest.approx(r)
    assert all(v == pytest.approx(1.0) for v in st["distance_between_means"].values())
    assert st["ratio"] == pytest.approx(1.0 / r) and st["equidistance"] == pytest.approx(1.0)
    # moving one class away breaks equidistance and raises its distance to its template
    x2 = x.clone()
    x2[labels == 2] += torch.tensor([0.0, 1.0], dtype=torch.float64)
    st2 = cluster_stats(x2, labels, w, ["a", "b", "c"])
    assert st2["equidistance"] < 0.9 and st2["classes"]["c"]["mean_distance_to_template"] > 0.9
    with pytest.raises(ValueError, match="no examples of 'c'"):
        cluster_stats(x[:8], labels[:8], w, ["a", "b", "c"])


def test_content_tokens_skip_function_words_subwords_and_specials():
    from collections import Counter

    class Dict:
        nspecial = 4
        symbols = ["<s>", "<pad>", "</s>", "<unk>", "the", "man", "wa@@", ".", "dog", "is", "street", "a"]

        def __getitem__(self, i):
            return self.symbols[i]

    counts = Counter({2: 100, 4: 90, 5: 50, 6: 45, 7: 40, 8: 30, 9: 25, 10: 20, 11: 99})
    assert content_tokens(counts, Dict(), 3) == ["man", "dog", "street"]
    # "dog" mostly ends a BPE-split word (after "wa@@"): not a whole word
    assert content_tokens(counts, Dict(), 2, inside=Counter({8: 20})) == ["man", "street"]
