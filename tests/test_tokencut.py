"""TokenCut on hand-built feature maps whose cut is known, and its two eigensolvers."""

import numpy as np
import pytest
import torch

from lost_reg.methods import TokenCut, build_method, tokencut
from lost_reg.methods.spectral import fiedler
from lost_reg.methods.tokencut import cosine_graph
from lost_reg.scores import find_objects, score

from .test_lost import block, feature_map


def noisy(rows: int, cols: int, objects: dict, seed: int = 0, sigma: float = 0.05) -> torch.Tensor:
    torch.manual_seed(seed)
    return feature_map(rows, cols, objects) + sigma * torch.randn(1, rows * cols, 3)


@pytest.mark.parametrize("solver", ["lanczos", "eigh"])
def test_an_object_on_plain_background_is_cut_out(solver):
    f = noisy(8, 10, {1: block(2, 3, 3, 4)})
    (r,) = tokencut(f, (8, 10), tau=0.5, solver=solver)
    assert r.box == (3, 2, 7, 5)
    assert r.mask.sum() == 12 and r.mask[2:5, 3:7].all()
    assert r.mask[r.seed]
    assert r.eigenvector[r.mask].min() > r.eigenvector[~r.mask].max()  # foreground side positive
    assert 0 <= r.eigenvalues[0] <= r.eigenvalues[1]


def test_the_box_is_the_seeds_4_connected_component():
    # one feature, two separate blobs: the bipartition holds both, the box only the seed's
    f = noisy(8, 8, {1: block(0, 0, 2, 2) + block(5, 5, 3, 3)})
    (r,) = tokencut(f, (8, 8), tau=0.5)
    assert r.box in ((0, 0, 2, 2), (5, 5, 8, 8))
    assert r.mask[r.seed] and r.mask.sum() in (4, 9)


def test_both_solvers_and_the_reference_statement_agree_on_random_graphs():
    from .tokencut_reference import reference_tokencut

    torch.manual_seed(0)
    f = torch.randn(6, 9 * 11, 16) + 0.5 * torch.randn(6, 1, 16) + torch.randn(1, 1, 16)
    f[:, 20:35] += 1.5 * torch.randn(6, 1, 16)  # an "object" per image
    lanczos = tokencut(f, (9, 11), tau=0.3, solver="lanczos")
    eigh = tokencut(f, (9, 11), tau=0.3, solver="eigh")
    for i, (a, b) in enumerate(zip(lanczos, eigh)):
        box, _ = reference_tokencut(f[i].double().numpy(), (9, 11), tau=0.3)
        assert a.box == b.box == box and a.seed == b.seed, i
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.eigenvalues[0], b.eigenvalues[0], atol=1e-4)
        corr = np.corrcoef(a.eigenvector.ravel(), b.eigenvector.ravel())[0, 1]
        assert corr > 0.999  # same vector, same orientation (foreground positive)


def test_fiedler_solves_the_generalised_problem():
    torch.manual_seed(1)
    w = cosine_graph(torch.randn(3, 40, 8), tau=0.1, eps=1e-5)
    for solver in ("lanczos", "eigh"):
        cut = fiedler(w, solver)
        x, lam = cut.vector.double(), cut.eigenvalues[:, 0].double()
        wd = w.double()
        d = torch.diag_embed(wd.sum(-1))
        residual = (d - wd) @ x[..., None] - lam[:, None, None] * (d @ x[..., None])
        assert (residual.norm(dim=1)[:, 0] / (d @ x[..., None]).norm(dim=1)[:, 0]).max() < 1e-4, solver
        assert ((d @ x[..., None])[..., 0].sum(-1).abs() < 1e-3).all()  # D-orthogonal to the constant vector


def test_a_graph_without_any_weak_edge_gives_the_whole_image():
    # every cosine above tau: no cut exists; the reference would return LAPACK's arbitrary pick
    f = feature_map(5, 6, {}) + 0.01 * torch.randn(1, 30, 3)
    for solver in ("lanczos", "eigh"):
        (r,) = tokencut(f, (5, 6), tau=0.2, solver=solver)
        assert r.box == (0, 0, 6, 5) and r.seed == (0, 0) and r.mask.all()


def mixed_batch() -> torch.Tensor:
    """Seven images of one 8x10 grid whose Lanczos runs converge after different numbers of steps; the
    last is two perfect clusters, whose Krylov space closes (the solver restarts it)."""
    torch.manual_seed(0)
    f = torch.randn(6, 80, 16) * torch.tensor([0.5, 2.0, 4.0, 0.5, 2.0, 4.0])[:, None, None] + torch.randn(1, 1, 16)
    f[:, 20:35] += 1.5 * torch.randn(6, 1, 16)
    clusters = torch.nn.functional.pad(feature_map(8, 10, {1: block(2, 3, 3, 4)}), (0, 13))
    return torch.cat([f, clusters])


@pytest.mark.parametrize("solver", ["lanczos", "eigh"])
def test_a_batch_solved_at_once_equals_one_image_at_a_time(solver):
    # the GPU's path (batched=True) on the CPU, against the CPU's (batched=False)
    f = mixed_batch()
    exclude = torch.zeros(7, 80, dtype=torch.bool)
    exclude[1, :10] = exclude[4, 30:40] = True
    for ex in (None, exclude):
        batched = tokencut(f, (8, 10), tau=0.3, exclude=ex, solver=solver, batched=True)
        alone = tokencut(f, (8, 10), tau=0.3, exclude=ex, solver=solver, batched=False)
        for a, b in zip(batched, alone):
            assert a.box == b.box
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, atol=1e-5)
            x = np.abs(b.eigenvector)  # patches with the same features share |x| exactly: rounding picks the seed
            assert a.seed == b.seed or x[a.seed] >= (1 - 1e-3) * x[b.seed], (a.seed, b.seed)


def test_images_leave_the_lanczos_batch_as_they_converge():
    w = cosine_graph(mixed_batch(), tau=0.3, eps=1e-5)
    steps = fiedler(w).steps.tolist()
    assert steps == [fiedler(w[i : i + 1]).steps.item() for i in range(7)]  # each as many steps as alone
    assert len(set(steps)) >= 3, steps  # e.g. 8 … 32: the quick ones left the batch early


def test_exclude_takes_patches_out_of_the_graph_and_objects_come_one_by_one():
    f = noisy(10, 12, {1: block(1, 1, 3, 3), 2: block(5, 7, 4, 4)}, seed=2)
    method = TokenCut(tau=0.5)
    (found,) = find_objects(method, f, (10, 12), max_objects=2)
    assert sorted(r.box for r, _ in found) == sorted([(1, 1, 4, 4), (7, 5, 11, 9)])
    (first,) = method(f, (10, 12))
    assert found[0][0].box == first.box
    assert not (found[0][0].mask & found[1][0].mask).any()
    for r, s in found:
        assert s > 0.9, s  # its own Ncut: the blob shares only eps edges with the rest


def test_score_is_one_minus_half_the_ncut_on_its_own_graph():
    f = noisy(6, 6, {1: block(1, 1, 2, 2)}, seed=4)
    method = TokenCut(tau=0.5, eps=0.01)
    (r,) = method(f, (6, 6))
    w = cosine_graph(f, 0.5, 0.01)[0].double().numpy()
    a = r.mask.reshape(-1)
    cut = w[a][:, ~a].sum()
    want = 1 - (cut / w[a].sum() + cut / w[~a].sum()) / 2
    assert score(r, features=f[0], method=method) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="LOST's degree"):
        score(r, kind="seed")
    assert score(r, kind="fill") == 1.0


def test_options_are_checked():
    for bad in ({"tau": 1.5}, {"tau": float("nan")}, {"eps": 0.0}, {"eps": 2.0}, {"solver": "arpack"},
                {"components": "opencv"}):
        with pytest.raises(ValueError):
            TokenCut(**bad)
    with pytest.raises(ValueError, match="k_patches does not apply to method tokencut"):
        build_method("tokencut", k_patches=10)
    with pytest.raises(ValueError, match="unknown method"):
        build_method("maskcut")
    assert TokenCut().describe() == "tokencut(tau=0.2, eps=1e-05, solver=lanczos, components=scipy)"


def test_components_back_ends_agree():
    torch.manual_seed(5)
    f = torch.randn(5, 8 * 8, 8) + torch.randn(1, 1, 8)
    a = tokencut(f, (8, 8), tau=0.2, components="scipy")
    b = tokencut(f, (8, 8), tau=0.2, components="torch")
    for x, y in zip(a, b):
        assert x.box == y.box
        np.testing.assert_array_equal(x.mask, y.mask)


@pytest.mark.parametrize("solver", ["lanczos", "eigh"])
@pytest.mark.parametrize("grid", [(1, 1), (1, 2), (2, 1), (1, 3)])
def test_grids_of_one_to_three_patches(solver, grid):
    # found by schemathesis: a 16 px upload resized to one 14 px patch made the eigh solver index past the end
    torch.manual_seed(6)
    f = torch.randn(2, grid[0] * grid[1], 8)
    for r in tokencut(f, grid, tau=0.2, solver=solver):
        x0, y0, x1, y1 = r.box
        assert 0 <= x0 < x1 <= grid[1] and 0 <= y0 < y1 <= grid[0] and r.mask[r.seed]
