#!/usr/bin/env bash
# Run the performance benchmarks (targets 1-5 of the performance issue, plus
# serving latency) and write benchmarks/RESULTS.md from benchmarks/results/*.json.
#
#   . .venv/bin/activate                 # the project's venv: this script uses `python` on PATH
#   bash benchmarks/run_all.sh [--only NAME[,NAME...]] [--skip-recbole]
#
# Steps, in this order (NAME for --only):
#   train_speed  benchmarks/train_speed.py --variant paper, then --variant authors  (target 1),
#                then --variant paper --threads 2 (the authors' code was timed on 2 threads);
#                each with --repeats 5 (five fused runs, one autograd reference)
#   accuracy     benchmarks/lastfm_accuracy.py                                      (target 1)
#   rank         benchmarks/rank_speed.py                                           (target 3)
#   recbole      benchmarks/vs_recbole.py on lastfm and book-crossing               (target 2)
#                (builds benchmarks/peers/.venv-recbole with peers/recbole.sh if it is missing;
#                book-crossing reads $KGNNLS_DATA, else ../shared/data, and is skipped when
#                neither holds it)
#   scale        benchmarks/scale.py                                                (target 4)
#   kg_size      benchmarks/kg_size.py                                              (target 5)
#   profile      benchmarks/profile_epoch.py  (where one Last.FM epoch goes, both training paths)
#   deep         benchmarks/deep_speed.py on book-crossing (step time at L = 1..4, fused vs
#                autograd; data as for recbole, skipped without it)
#   serve        benchmarks/serve.py                                                (latency)
#   load_speed   benchmarks/load_speed.py: 5 M and 20 M-row raw MovieLens to a ready Dataset
# and always ends with  python benchmarks/summarize.py  (writes benchmarks/RESULTS.md).
#
# Works from any directory (it cd's to the repository root). OMP_NUM_THREADS is
# set to 1 unless already set. PYTHON=... overrides the interpreter. The full run
# takes a long time (scale.py alone is tens of minutes on 2 cores); the machine
# should otherwise be idle, as every result records the other processes' load.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

ALL_STEPS=(train_speed accuracy rank recbole scale kg_size profile deep serve load_speed)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

ONLY=""
SKIP_RECBOLE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --only) [ $# -ge 2 ] || { echo "--only needs NAME[,NAME...]" >&2; exit 2; }
                ONLY="$2"; shift 2 ;;
        --only=*) ONLY="${1#--only=}"; shift ;;
        --skip-recbole) SKIP_RECBOLE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
    esac
done

declare -A WANT=()
if [ -n "$ONLY" ]; then
    IFS=',' read -r -a names <<< "$ONLY"
    for n in "${names[@]}"; do
        [ -n "$n" ] || continue
        ok=0
        for s in "${ALL_STEPS[@]}"; do [ "$s" = "$n" ] && ok=1; done
        [ "$ok" = 1 ] || { echo "unknown step '$n' (names: ${ALL_STEPS[*]})" >&2; exit 2; }
        WANT[$n]=1
    done
else
    for s in "${ALL_STEPS[@]}"; do WANT[$s]=1; done
fi
[ "$SKIP_RECBOLE" = 1 ] && unset 'WANT[recbole]'

command -v "$PYTHON" >/dev/null || { echo "no '$PYTHON' on PATH: activate the venv first" >&2
                                     exit 1; }

wanted() { [ -n "${WANT[$1]+x}" ]; }
header() { echo; echo "=== [$(date '+%Y-%m-%d %H:%M:%S')] $*"; }
trap 'echo "run_all.sh: step failed (line $LINENO): $BASH_COMMAND" >&2' ERR

echo "run_all.sh in $ROOT with $("$PYTHON" --version 2>&1) ($(command -v "$PYTHON")), "\
"OMP_NUM_THREADS=$OMP_NUM_THREADS"

if wanted train_speed; then
    # five fused runs each (one autograd reference): the host's speed drifts within minutes
    for variant in paper authors; do
        header "train_speed ($variant): benchmarks/train_speed.py --variant $variant --repeats 5"
        "$PYTHON" benchmarks/train_speed.py --variant "$variant" --repeats 5
    done
    header "train_speed (paper, 2 threads): benchmarks/train_speed.py --variant paper --threads 2 --repeats 5"
    OMP_NUM_THREADS=2 "$PYTHON" benchmarks/train_speed.py --variant paper --threads 2 --repeats 5
fi

if wanted accuracy; then
    header "accuracy: benchmarks/lastfm_accuracy.py"
    "$PYTHON" benchmarks/lastfm_accuracy.py
fi

if wanted rank; then
    header "rank: benchmarks/rank_speed.py --dataset lastfm"
    "$PYTHON" benchmarks/rank_speed.py --dataset lastfm
fi

if wanted recbole; then
    if [ ! -x benchmarks/peers/.venv-recbole/bin/python ]; then
        header "recbole: building benchmarks/peers/.venv-recbole (benchmarks/peers/recbole.sh)"
        PYTHON="$PYTHON" bash benchmarks/peers/recbole.sh
    fi
    header "recbole (lastfm): benchmarks/vs_recbole.py --dataset lastfm"
    "$PYTHON" benchmarks/vs_recbole.py --dataset lastfm
    if [ -n "${KGNNLS_DATA:-}" ]; then
        header "recbole (book-crossing): benchmarks/vs_recbole.py --dataset book-crossing" \
               "(data from \$KGNNLS_DATA=$KGNNLS_DATA)"
        "$PYTHON" benchmarks/vs_recbole.py --dataset book-crossing
    elif [ -d "$ROOT/../shared/data" ]; then
        data_dir="$(cd "$ROOT/../shared/data" && pwd)"
        header "recbole (book-crossing): benchmarks/vs_recbole.py --dataset book-crossing" \
               "--data-dir $data_dir"
        "$PYTHON" benchmarks/vs_recbole.py --dataset book-crossing --data-dir "$data_dir"
    else
        header "recbole (book-crossing): SKIPPED, no data (set KGNNLS_DATA or" \
               "provide ../shared/data)"
    fi
fi

if wanted scale; then
    header "scale: benchmarks/scale.py"
    "$PYTHON" benchmarks/scale.py
fi

if wanted kg_size; then
    header "kg_size: benchmarks/kg_size.py"
    "$PYTHON" benchmarks/kg_size.py
fi

if wanted profile; then
    header "profile: benchmarks/profile_epoch.py"
    "$PYTHON" benchmarks/profile_epoch.py
fi

if wanted deep; then
    if [ -n "${KGNNLS_DATA:-}" ]; then
        header "deep: benchmarks/deep_speed.py --dataset book-crossing"
        "$PYTHON" benchmarks/deep_speed.py --dataset book-crossing
    elif [ -d "$ROOT/../shared/data" ]; then
        data_dir="$(cd "$ROOT/../shared/data" && pwd)"
        header "deep: benchmarks/deep_speed.py --dataset book-crossing --data-dir $data_dir"
        "$PYTHON" benchmarks/deep_speed.py --dataset book-crossing --data-dir "$data_dir"
    else
        header "deep: SKIPPED, no Book-Crossing data (set KGNNLS_DATA or provide ../shared/data)"
    fi
fi

if wanted serve; then
    header "serve: benchmarks/serve.py"
    "$PYTHON" benchmarks/serve.py
fi

if wanted load_speed; then
    header "load_speed: benchmarks/load_speed.py"
    "$PYTHON" benchmarks/load_speed.py
fi

header "summary: benchmarks/summarize.py"
"$PYTHON" benchmarks/summarize.py
