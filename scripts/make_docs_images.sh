#!/usr/bin/env bash
# Regenerate the README's pictures from the demo's run (examples/heat_mpi.py on 4 ranks):
#   docs/images/heat-1d-plot.png    simvue-hpc plot heat-1d residual energy
#   docs/images/heat-1d-report.png  the top of simvue-hpc report heat-1d, in headless Chromium
# Uses .venv when there is one (scripts/demo.sh or scripts/test.sh make it), else the current PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
bash scripts/install_chromium.sh >/dev/null
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SIMVUE_OFFLINE_DIRECTORY="$work/store"
(cd "$work" && mpiexec -n 4 python "$root/examples/heat_mpi.py" --steps 200 --name heat-1d >/dev/null)
mkdir -p docs/images
simvue-hpc plot heat-1d residual energy -o docs/images/heat-1d-plot.png
simvue-hpc report heat-1d -o "$work/heat-1d.html" >/dev/null
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,4000 \
    --screenshot="$work/page.png" "file://$work/heat-1d.html" >/dev/null 2>&1
python - "$work/page.png" docs/images/heat-1d-report.png <<'PY'
"""Keep the page from its top down to the second plot: the details, the counters, the metrics."""
import sys

from PIL import Image

page = Image.open(sys.argv[1]).convert("RGB")
page.crop((0, 0, page.width, min(page.height, 2300))).save(sys.argv[2], optimize=True)
PY
echo "docs/images/heat-1d-plot.png docs/images/heat-1d-report.png"
