"""The SAMI objective against an independent, loop-based implementation."""

from __future__ import annotations

import math

import pytest
import torch

from sami.loss import paper_mutual_information, sami_loss


def naive_sami(matrix: list[list[float]]) -> tuple[float, float, float, float]:
    """(loss, row term, column term, accuracy) of one C×C matrix, written with plain Python loops."""
    c = len(matrix)

    def nll(values: list[float], target: int) -> float:
        top = max(values)
        return -(values[target] - top - math.log(sum(math.exp(v - top) for v in values)))

    row = sum(nll(matrix[i], i) for i in range(c)) / c
    col = sum(nll([matrix[i][j] for i in range(c)], j) for j in range(c)) / c
    hits = sum(max(range(c), key=lambda j: matrix[i][j]) == i for i in range(c))
    hits += sum(max(range(c), key=lambda i: matrix[i][j]) == j for j in range(c))
    return (row + col) / 2, row, col, hits / (2 * c)


@pytest.mark.parametrize("c", [2, 3, 4, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_naive_implementation(c, batch):
    gen = torch.Generator().manual_seed(c * 10 + batch)
    logps = -5 * torch.rand(batch, c, c, generator=gen, dtype=torch.float64)
    out = sami_loss(logps)
    parts = [naive_sami(m.tolist()) for m in logps]
    mean = [sum(p[k] for p in parts) / batch for k in range(4)]
    assert out.loss.item() == pytest.approx(mean[0], abs=1e-6)
    assert out.loss_row.item() == pytest.approx(mean[1], abs=1e-6)
    assert out.loss_col.item() == pytest.approx(mean[2], abs=1e-6)
    assert out.accuracy.item() == pytest.approx(mean[3])
    assert out.mi_bound.item() == pytest.approx(math.log(c) - mean[0], abs=1e-6)
    if batch == 1:  # a bare [C, C] matrix is the same as a batch of one
        assert sami_loss(logps[0]).loss.item() == pytest.approx(out.loss.item())


def test_row_and_column_terms_differ_on_an_asymmetric_matrix():
    logps = torch.tensor([[0.0, 0.0, 0.0], [-8.0, 0.0, -8.0], [-8.0, -8.0, 0.0]])
    out = sami_loss(logps)
    row, col = naive_sami(logps.tolist())[1:3]
    assert out.loss_row.item() == pytest.approx(row, abs=1e-5)
    assert out.loss_col.item() == pytest.approx(col, abs=1e-5)
    assert col - row > 0.05  # row 0 is uninformative, every column is not


@pytest.mark.parametrize("c", [2, 3, 6])
def test_uniform_matrix_gives_log_c(c):
    out = sami_loss(torch.full((2, c, c), -7.25))
    assert out.loss.item() == pytest.approx(math.log(c), abs=1e-6)
    assert out.loss_row.item() == pytest.approx(math.log(c), abs=1e-6)
    assert out.loss_col.item() == pytest.approx(math.log(c), abs=1e-6)
    assert out.mi_bound.item() == pytest.approx(0.0, abs=1e-6)


def test_joint_permutation_of_rows_and_columns_changes_nothing():
    gen = torch.Generator().manual_seed(0)
    logps = torch.randn(4, 5, 5, generator=gen, dtype=torch.float64)
    perm = torch.randperm(5, generator=gen)
    permuted = logps[:, perm][:, :, perm]
    assert not torch.equal(permuted, logps)
    a, b = sami_loss(logps), sami_loss(permuted)
    for name in ("loss", "loss_row", "loss_col", "accuracy", "mi_bound"):
        assert getattr(a, name).item() == pytest.approx(getattr(b, name).item(), abs=1e-6)
    # Permuting columns alone moves the matching pairs off the diagonal: the loss changes.
    assert sami_loss(logps[:, :, perm]).loss.item() != pytest.approx(a.loss.item(), abs=1e-6)


def test_loss_decreases_as_the_diagonal_grows():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(3, 4, 4, generator=gen)
    eye = torch.eye(4)
    losses = [sami_loss(base + t * eye).loss.item() for t in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.01
    assert sami_loss(base + 8 * eye).accuracy.item() == 1.0


def test_gradient_raises_the_diagonal_and_lowers_the_rest():
    logps = torch.zeros(3, 3, requires_grad=True)
    sami_loss(logps).loss.backward()
    grad = logps.grad
    assert (torch.diagonal(grad) < 0).all()
    assert (grad[~torch.eye(3, dtype=torch.bool)] > 0).all()


@pytest.mark.parametrize("shape", [(1, 1), (2, 1, 1), (2, 3), (3,), (2, 2, 2, 2)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError):
        sami_loss(torch.zeros(shape))


def test_paper_mutual_information_matches_its_definition():
    logps = torch.tensor([[[-10.0, -30.0], [-20.0, -12.0]]])
    # response 0: -10 - (-10 - 20) / 2 = 5 ; response 1: -12 - (-30 - 12) / 2 = 9 ; mean 7
    assert paper_mutual_information(logps).item() == pytest.approx(7.0)
    assert paper_mutual_information(torch.full((3, 3), -4.0)).item() == pytest.approx(0.0)
