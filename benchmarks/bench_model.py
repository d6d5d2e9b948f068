"""Training-step cost of EnhancedBERT4Rec beside a plain torch.nn.TransformerEncoder of the same size.

One step = forward + backward of a masked-item batch (no optimiser step): ~15% of the real positions and
the last position are replaced by MASK and scored by the tied item head. The full model also pays for its
rating head (on the same rows) and its preference head (on every sequence), as the trainer will.
The models are timed in turn inside every run (order alternating), so drift in the machine hits all alike.

    python benchmarks/bench_model.py            # default config, batch 64, 2 threads
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from enhanced_model import PAD_INDEX, EnhancedBERT4Rec, ItemHead, ModelConfig, preference_loss  # noqa: E402


class TorchEncoderBERT4Rec(nn.Module):
    """The reference: item + learned position embeddings, torch's own encoder, the same tied item head.

    torch's layer also drops out inside the FFN (after the activation, 4 * hidden wide), which BERT does
    not; ffn_dropout=False removes it to compare like with like.
    """

    def __init__(self, config: ModelConfig, ffn_dropout: bool = True) -> None:
        super().__init__()
        H = config.hidden_size
        self.item_embedding = nn.Embedding(config.item_vocab_size, H, padding_idx=PAD_INDEX)
        self.position_embedding = nn.Embedding(config.seq_length, H)
        self.input_norm = nn.LayerNorm(H)
        layer = nn.TransformerEncoderLayer(
            H, config.num_heads, 4 * H, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, norm=nn.LayerNorm(H),
                                             enable_nested_tensor=False)
        if not ffn_dropout:
            for encoder_layer in self.encoder.layers:
                encoder_layer.dropout = nn.Identity()  # used only between the FFN's two linears
        self.item_head = ItemHead(config)

    def forward(self, item_seq: Tensor) -> Tensor:
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.input_norm(self.item_embedding(item_seq) + self.position_embedding(positions))
        return self.encoder(x, src_key_padding_mask=item_seq == PAD_INDEX)

    def item_logits(self, hidden_rows: Tensor) -> Tensor:
        return self.item_head(hidden_rows, self.item_embedding.weight)


def make_batch(config: ModelConfig, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Left-padded windows (a quarter of them shorter than T), 15% of real positions + the last masked."""
    T = config.seq_length
    item_seq = torch.randint(1, config.num_items + 1, (batch_size, T), generator=generator)
    short = torch.rand(batch_size, generator=generator) < 0.25
    lengths = torch.where(short, torch.randint(5, T, (batch_size,), generator=generator), T)
    is_pad = torch.arange(T)[None, :] < (T - lengths)[:, None]
    item_seq[is_pad] = PAD_INDEX
    day_of_year = torch.randint(1, 367, (batch_size, T), generator=generator).masked_fill(is_pad, 0)
    is_masked = (torch.rand(batch_size, T, generator=generator) < 0.15) & ~is_pad
    is_masked[:, -1] = True
    targets = item_seq[is_masked]
    genre_profile = torch.rand(batch_size, config.preference_size, generator=generator)
    return {
        "inputs": item_seq.masked_fill(is_masked, config.mask_index),
        "day_of_year": day_of_year,
        "users": torch.randint(1, config.num_users + 1, (batch_size,), generator=generator),
        "user_features": {feature["name"]: torch.randint(1, feature["size"], (batch_size,), generator=generator)
                          for feature in config.user_features},
        "is_masked": is_masked,
        "targets": targets,
        "ratings": torch.randint(1, 6, targets.shape, generator=generator).float(),
        "genre_profile": genre_profile / genre_profile.sum(dim=1, keepdim=True),
    }


def full_step(model: EnhancedBERT4Rec, batch: dict[str, Tensor]) -> None:
    out = model(batch["inputs"], batch["day_of_year"], batch["users"], **batch["user_features"])
    rows = out.hidden[batch["is_masked"]]
    loss = F.cross_entropy(model.item_logits(rows), batch["targets"])
    loss = loss + F.mse_loss(model.predict_rating(rows, batch["targets"]), batch["ratings"])
    preference_logits = model.predict_preference(out.hidden, batch["inputs"])
    loss = loss + preference_loss(preference_logits, batch["genre_profile"])
    model.zero_grad(set_to_none=True)
    loss.backward()


def plain_step(model: nn.Module, batch: dict[str, Tensor]) -> None:
    """Masked-item loss only: for the torch reference and for EnhancedBERT4Rec with every switch off."""
    hidden = model(batch["inputs"]).hidden if isinstance(model, EnhancedBERT4Rec) else model(batch["inputs"])
    loss = F.cross_entropy(model.item_logits(hidden[batch["is_masked"]]), batch["targets"])
    model.zero_grad(set_to_none=True)
    loss.backward()


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7, help="timed runs; the median is reported")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig()  # the design card's defaults: hidden 256, 4 heads, 4 layers, T=50
    plain_config = ModelConfig(use_item_side_info=False, use_user_tokens=False, use_temporal=False,
                               use_rating_head=False, use_preference_head=False)
    full = EnhancedBERT4Rec(config)
    full.set_item_side_info(*(
        (torch.rand(config.item_vocab_size, f["size"]) < 0.15).float() if f["kind"] == "multi"
        else torch.randint(1, f["size"], (config.item_vocab_size,)) for f in config.item_features))
    models: dict[str, tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], None]]] = {
        "torch.nn.TransformerEncoder": (TorchEncoderBERT4Rec(config), plain_step),
        "  same, no inner FFN dropout": (TorchEncoderBERT4Rec(config, ffn_dropout=False), plain_step),
        "EnhancedBERT4Rec, all switches off": (EnhancedBERT4Rec(plain_config), plain_step),
        "EnhancedBERT4Rec, default config": (full, full_step),
    }
    batch = make_batch(config, args.batch_size, torch.Generator().manual_seed(0))
    for model, step in models.values():
        model.train()
        for _ in range(args.warmup):
            step(model, batch)

    timings: dict[str, list[float]] = {name: [] for name in models}
    for run in range(args.runs):
        order = list(models) if run % 2 == 0 else list(reversed(models))
        for name in order:
            model, step = models[name]
            timings[name].append(seconds_per_step(lambda m=model, s=step: s(m, batch), args.steps))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"T {config.seq_length}, hidden {config.hidden_size}, {config.num_layers} layers, "
          f"{int(batch['is_masked'].sum())} scored rows; median of {args.runs} runs x {args.steps} steps")
    reference = statistics.median(timings["torch.nn.TransformerEncoder"])
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        params = sum(p.numel() for p in models[name][0].parameters())
        print(f"{name:38s} {1000 * median:7.1f} ms/step  {args.batch_size / median:7.1f} seq/s  "
              f"x{median / reference:.2f}  ({params:,} parameters)")


if __name__ == "__main__":
    main()
