"""benchmarks/bench_output_head.py's Mixture-of-Logits sketch computes the mixture it is timed as."""

import torch
from torch import nn

from benchmarks.bench_output_head import MixtureOfLogitsSketch


def sketch_with_zero_gate(hidden_size: int, components: int) -> MixtureOfLogitsSketch:
    torch.manual_seed(0)
    mol = MixtureOfLogitsSketch(hidden_size, components)
    for layer in (mol.query_gate, mol.item_gate, mol.pair_gate):
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return mol


def test_a_flat_gate_gives_the_mean_of_the_component_dot_products():
    mol = sketch_with_zero_gate(8, 2)
    query, items = torch.randn(3, 8), torch.randn(5, 8)
    q, x = mol.query_proj(query), mol.item_proj(items)
    # two components of 4 dimensions each, equal weights: half the sum of their dot products
    expected = 0.5 * (q[:, :4] @ x[:, :4].T + q[:, 4:] @ x[:, 4:].T)
    torch.testing.assert_close(mol(query, items), expected)


def test_an_item_gate_that_favours_one_component_picks_that_components_dot_product():
    mol = sketch_with_zero_gate(8, 2)
    with torch.no_grad():
        mol.item_gate.bias.copy_(torch.tensor([0.0, 50.0]))  # every item's gate: component 1
    query, items = torch.randn(3, 8), torch.randn(5, 8)
    q, x = mol.query_proj(query), mol.item_proj(items)
    torch.testing.assert_close(mol(query, items), q[:, 4:] @ x[:, 4:].T)
