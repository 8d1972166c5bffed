"""`PatchResult`: the metric of every patched run on a labelled (layer, pos / head) grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class PatchResult:
    """Metric of every patched run, on a labelled grid.

    values: (*grid) — or (metric, *grid) when several metrics were given, with a trailing
        batch axis under reduce="none". `dims` names the axes, `index` holds the layer /
        position / head each entry stands for, `labels` their display names.
    baseline / source: the metric of the unpatched base run and of the source run, shaped
        like one cell ((metric,)? (batch,)?). For method="attribution" the values are the
        first-order estimates baseline + grad . (source - base).
    """

    values: torch.Tensor
    dims: tuple[str, ...]
    index: dict[str, list]
    labels: dict[str, list[str]]
    baseline: torch.Tensor
    source: torch.Tensor
    act: str
    direction: str
    method: str = "activation"
    metric_names: list[str] = field(default_factory=lambda: ["metric"])

    @property
    def effect(self) -> torch.Tensor:
        """values - baseline: what patching the site changed."""
        return self.values - self._cell(self.baseline)

    def normalized(self) -> torch.Tensor:
        """(values - baseline) / (source - baseline): 1 = the patch moves the metric all the
        way to the source run's value, 0 = no change."""
        return self.effect / self._cell(self.source - self.baseline)

    def _cell(self, x: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-cell quantity against `values`."""
        grid = [d for d in self.dims if d not in ("metric", "batch")]
        shape = list(x.shape)
        lead = shape[:1] if "metric" in self.dims else []
        tail = shape[len(lead):]
        return x.reshape(*lead, *([1] * len(grid)), *tail)

    def __getitem__(self, metric: str) -> "PatchResult":
        """The result for one metric of a multi-metric sweep."""
        if "metric" not in self.dims:
            raise KeyError("this result holds a single metric")
        i = self.metric_names.index(metric)
        return PatchResult(self.values[i], self.dims[1:], {k: v for k, v in self.index.items() if k != "metric"},
                           {k: v for k, v in self.labels.items() if k != "metric"}, self.baseline[i], self.source[i],
                           self.act, self.direction, self.method, [metric])

    def to_frame(self):
        """Long format: one row per cell; columns = the dims (their labels and indices), value,
        effect, normalized."""
        import pandas as pd

        vals, eff, norm = self.values.numpy(), self.effect.numpy(), self.normalized().numpy()
        rows = []
        for cell in np.ndindex(*vals.shape):
            if not np.isfinite(vals[cell]):
                continue
            row = {}
            for d, i in zip(self.dims, cell):
                row[d] = self.labels[d][i]
                if d in self.index:
                    row[f"{d}_index"] = self.index[d][i]
            row.update(value=float(vals[cell]), effect=float(eff[cell]), normalized=float(norm[cell]))
            rows.append(row)
        return pd.DataFrame(rows)

    def top(self, k: int = 10, by: str = "effect") -> list[tuple[str, float]]:
        """The k cells with the largest |effect| (or |normalized|), as ("L1 H0", value) pairs."""
        if "metric" in self.dims or "batch" in self.dims:
            raise ValueError("top() ranks a single-metric, batch-reduced result; index it first (result['name'])")
        score = self.effect if by == "effect" else self.normalized()
        flat = score.flatten().nan_to_num(0.0)
        order = flat.abs().argsort(descending=True)[:k]
        out = []
        for i in order.tolist():
            cell = np.unravel_index(i, score.shape)
            out.append((" ".join(self.labels[d][j] for d, j in zip(self.dims, cell)), float(flat[i])))
        return out


def labelled(values, metrics, many, per_example, axes: dict[str, list], pos_labels, base_v, source_v, act, direction,
            method) -> PatchResult:
    """Label (metric, *grid[, batch]) values whose grid axes are `axes` (dim -> indices)."""
    names = {"layer": lambda l: f"L{l}", "head": lambda h: f"H{h}",
             "pos": lambda p: str(p) if pos_labels is None else str(pos_labels[p])}
    labels = {d: [names[d](i) for i in idx] for d, idx in axes.items()}
    index = dict(axes)
    dims = ("metric",) * many + tuple(axes) + ("batch",) * per_example
    if many:
        labels["metric"] = index["metric"] = list(metrics)
    if per_example:
        labels["batch"] = [str(b) for b in range(values.shape[-1])]
    values = values.cpu()
    if not many:
        values, base_v, source_v = values[0], base_v[0], source_v[0]
    return PatchResult(values, dims, index, labels, base_v.cpu(), source_v.cpu(), act, direction, method, list(metrics))
