"""The gradient pass skips branches whose gradient is all zeros (:func:`skip_zero_branches`), with
the same gradients to the bit; and a sparse cotangent's score is the dense one's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convlens.adapters._autograd import _score, skip_zero_branches  # noqa: E402


class TwoHeads(torch.nn.Module):
    """Two conv heads on one trunk, their outputs joined along the positions (a detector's strides)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fine = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(4, 5, 1))
        self.coarse = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.SiLU(),
                                          torch.nn.Conv2d(4, 5, 1))

    def forward(self, leaf: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fine(leaf).flatten(2), self.coarse(leaf).flatten(2)], 2)


def _pass(prune: bool, anchor: int) -> tuple[torch.Tensor, list]:
    model = TwoHeads()
    for p in model.parameters():
        p.requires_grad_(False)
    leaf = model.trunk(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))).requires_grad_()
    y = model(leaf)
    cot = torch.zeros_like(y)
    cot[0, 2, anchor] = 1.0
    cot[0, :2, anchor] = 0.25
    seen: list = []
    if prune:
        skip_zero_branches(y)
        # after the pruning hooks: what the fine head's last conv receives
        node = y.grad_fn.next_functions[0][0].next_functions[0][0]
        assert node.name().startswith("Convolution")
        node.register_prehook(lambda grads: seen.extend(grads))
    (g,) = torch.autograd.grad([y], [leaf], [cot])
    return g, seen


@pytest.mark.parametrize("anchor", [3, 64 + 5])  # a fine position, a coarse one
def test_pruned_gradients_are_the_dense_ones_to_the_bit(anchor):
    dense, _ = _pass(False, anchor)
    pruned, seen = _pass(True, anchor)
    assert torch.equal(dense, pruned)
    assert dense.abs().sum() > 0
    fine_head_used = anchor < 64
    assert (seen[0] is not None) == fine_head_used  # the unused head's conv got no gradient at all


def test_a_sparse_cotangents_score_is_the_dense_sum():
    rng = np.random.default_rng(0)
    out = torch.from_numpy(rng.standard_normal((3, 6, 50)).astype(np.float32))
    sparse = torch.zeros_like(out)
    sparse[0, 1, 7], sparse[1, 4, 49], sparse[2, 0, 0] = 1.0, 0.5, -2.0
    got, is_sparse = _score(out, sparse)
    assert is_sparse
    want = (out.double() * sparse.double()).flatten(1).sum(1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    dense = torch.from_numpy(rng.standard_normal((3, 6, 50)).astype(np.float32))
    got, is_sparse = _score(out, dense)
    assert not is_sparse
    np.testing.assert_allclose(got, (out.double() * dense.double()).flatten(1).sum(1).numpy(), rtol=1e-12)
