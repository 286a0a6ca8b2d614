"""Command-line tools: demo, sweeps, reports, curves and the offline Kaggle bundle."""
