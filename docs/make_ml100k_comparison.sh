#!/usr/bin/env bash
# Reproduces docs/ml100k/: RQ-KMeans, RQ-VAE, GAOQ and DRQ on MovieLens-100K, side by side.
# Usage: bash docs/make_ml100k_comparison.sh   (from the repository root, after `pip install -e .`)
set -euo pipefail
SIDKIT=${SIDKIT:-.venv/bin/sidkit}
RUNS=${RUNS:-runs}
for m in rqkmeans rqvae gaoq drq; do
  "$SIDKIT" run --method "$m" --out "$RUNS/$m"
done
"$SIDKIT" compare "$RUNS/rqkmeans" "$RUNS/rqvae" "$RUNS/gaoq" "$RUNS/drq" --out docs/ml100k
