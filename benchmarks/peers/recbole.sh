#!/usr/bin/env bash
# Make the RecBole 1.2.1 peer venv and patch it (see README.md beside this file).
#
#   bash benchmarks/peers/recbole.sh [VENV]     # default benchmarks/peers/.venv-recbole
#
# Idempotent: re-running checks the pins and the patches. The venv is
# gitignored; nothing of RecBole is committed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-${RECBOLE_VENV:-$HERE/.venv-recbole}}"
PYTHON="${PYTHON:-python3}"
TORCH="2.13.0"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
torch_is_pinned() {
    "$VENV/bin/python" -W ignore -c "import torch, sys; v = torch.__version__; \
sys.exit(0 if v.split('+')[0] == '$TORCH' and not torch.version.cuda else 'torch ' + v)"
}

# 1. torch FIRST, pinned: the machine's local CPU wheel. Installed before
#    anything that depends on torch, so no resolver ever reaches for the
#    registry's newest (CUDA, several GB) build.
pip_install "torch==$TORCH"
torch_is_pinned

# 2. RecBole itself without its declared dependencies: it declares ray,
#    plotly, thop, tabulate, psutil, which training and evaluating KGNNLS
#    never imports (hyper-parameter tuning, FLOPs, GPU stats, quick_start).
pip_install --no-deps "recbole==1.2.1"

# 3. What `recbole.config/.data/.utils/.trainer/.evaluator` import, pinned to
#    the versions this benchmark was run with (NumPy 2 with the patches below;
#    pandas < 3, whose copy-on-write/str dtypes RecBole 1.2.1 predates;
#    tensorboard because recbole.utils imports torch.utils.tensorboard).
pip_install "numpy==2.4.6" "scipy==1.17.1" "pandas==2.3.3" "scikit-learn==1.9.1" \
    "PyYAML==6.0.4" "tqdm==4.70.1" "colorlog==4.7.2" "colorama==0.4.4" \
    "texttable==1.7.2" "tensorboard==2.21.0"
torch_is_pinned  # nothing above replaced torch

# 4. The patches (NumPy 2 aliases, torch.load weights_only), each listed in README.md.
"$VENV/bin/python" "$HERE/patch_recbole.py"

"$VENV/bin/python" -W ignore -c "import recbole.config, recbole.data, recbole.trainer, \
recbole.utils; from recbole.utils import get_model; get_model('KGNNLS'); \
print('recbole', __import__('recbole').__version__, 'ready in', '$VENV')"
