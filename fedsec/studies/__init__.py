"""Studies over many runs: sweeps (grids of cells) and privacy-budget studies."""
