"""One script per question: `python -m analyses.NAME --ckpt DIR --out DIR` writes interactive
plotly HTML figures and a `summary.json`. Every figure comes from `interp.plots`."""
