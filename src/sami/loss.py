"""The SAMI objective and its mutual-information estimates. Pure tensor code: no model, no files."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SAMILossOutput:
    """Result of `sami_loss`: the scalar loss plus its parts (all averaged over the batch)."""

    loss: torch.Tensor  # (row + col) / 2, differentiable
    loss_row: torch.Tensor  # contrast over responses, for each conditioning constitution
    loss_col: torch.Tensor  # contrast over constitutions, for each response
    accuracy: torch.Tensor  # fraction of rows and columns whose maximum lies on the diagonal
    mi_bound: torch.Tensor  # log C - loss: the InfoNCE lower bound on I(Y; C | X)


def sami_loss(logprobs: torch.Tensor) -> SAMILossOutput:
    """Symmetric InfoNCE over a `[C, C]` or `[B, C, C]` log-prob matrix.

    `logprobs[b, i, j] = log π(y_j | x_b, c_i)`: row i is the conditioning constitution, column j the response
    generated under constitution j. The diagonal holds the matching pairs. The loss is the mean over B of
    `(CE over each row + CE over each column) / 2`, as in Fränken et al. (2024).
    """
    if logprobs.dim() == 2:
        logprobs = logprobs.unsqueeze(0)
    if logprobs.dim() != 3 or logprobs.shape[-1] != logprobs.shape[-2]:
        raise ValueError(f"sami_loss expects a [C, C] or [B, C, C] matrix, got shape {tuple(logprobs.shape)}")
    n_batch, c, _ = logprobs.shape
    if c < 2:
        raise ValueError(f"sami_loss needs at least 2 constitutions, got C={c}")
    targets = torch.arange(c, device=logprobs.device).repeat(n_batch)
    rows = logprobs.reshape(n_batch * c, c)  # each row: one constitution, all responses
    cols = logprobs.transpose(1, 2).reshape(n_batch * c, c)  # each row: one response, all constitutions
    loss_row = F.cross_entropy(rows.float(), targets)
    loss_col = F.cross_entropy(cols.float(), targets)
    loss = (loss_row + loss_col) / 2
    with torch.no_grad():
        accuracy = torch.cat([rows.argmax(-1) == targets, cols.argmax(-1) == targets]).float().mean()
    return SAMILossOutput(
        loss=loss,
        loss_row=loss_row.detach(),
        loss_col=loss_col.detach(),
        accuracy=accuracy,
        mi_bound=(math.log(c) - loss).detach(),
    )


def paper_mutual_information(summed_logprobs: torch.Tensor) -> torch.Tensor:
    """The paper's "mutual information" metric from a `[C, C]` or `[B, C, C]` matrix of **summed** log-probs.

    mean over responses j of `ℓ(y_j | c_j) − (1/C) Σ_k ℓ(y_j | c_k)`. Not bounded by log C.
    """
    if summed_logprobs.dim() == 2:
        summed_logprobs = summed_logprobs.unsqueeze(0)
    diag = torch.diagonal(summed_logprobs, dim1=-2, dim2=-1)  # [B, C]: own constitution
    mean_over_constitutions = summed_logprobs.mean(dim=-2)  # [B, C]: column means
    return (diag - mean_over_constitutions).mean()
