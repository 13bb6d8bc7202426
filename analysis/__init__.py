"""Analysis of finished runs: `python -m analysis.compare` plots and tabulates methods side by side."""
