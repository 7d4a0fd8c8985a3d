"""A residual MLP for vector (toy) data such as the Gaussian mixture.

Class labels (num_classes > 0): a bias-free Linear of the one-hot row added to the time
embedding, so an all-zero row (unconditional) leaves the embedding exactly as without labels."""

from __future__ import annotations

from torch import Tensor, nn

from benchmark.nets.embedding import TimeLabelConditioned


class ResBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.lin1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.lin2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        y = self.act(self.lin1(self.act(self.norm(h))) + self.emb(emb))
        return h + self.lin2(self.drop(y))


class MLP(TimeLabelConditioned):
    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, num_cond: int = 1,
                 dropout: float = 0.0, emb_dim: int | None = None, num_classes: int = 0):
        super().__init__()
        emb_dim = emb_dim or hidden
        self._init_conditioning(emb_dim, num_cond, num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResBlock(hidden, emb_dim, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.conditioning(x, c, labels)
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, emb)
        return self.out(h)
