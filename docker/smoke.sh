#!/bin/sh
# `make image-smoke [IMAGE=fusionrec:cpu]`: the built image, run through its real entrypoint
# (buildah run --isolation chroot, or docker run), on a host directory mounted at /work:
# synthetic logs -> 2-rank torchrun training of the demo config -> evaluate -> export -> predict.
# Checks eval.json's AUCs are finite and predict wrote one row per eval row; prints the image's
# size and each step's time. Exit 0 when every check passed.
set -eu
IMAGE="${IMAGE:-fusionrec:cpu}"
HOST="${SMOKE_DIR:-$(mktemp -d /tmp/fusionrec-smoke.XXXXXX)}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$HOST"
chmod 0777 "$HOST"  # the image runs as uid 1000

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
    run() { docker run --rm -v "$HOST:/work" -e NPROC_PER_NODE=2 "$IMAGE" "$@"; }
else
    size=$(buildah images --format '{{.Size}}' "$IMAGE")
    ctr=$(buildah from --quiet "$IMAGE")
    trap 'buildah rm "$ctr" >/dev/null' EXIT
    # A chroot has the host's network but a hostname no resolver knows, which torchrun would
    # advertise to its workers: LOCAL_ADDR makes it advertise loopback instead.
    run() {
        buildah run --isolation chroot -v "$HOST:/work" --env NPROC_PER_NODE=2 --env LOCAL_ADDR=127.0.0.1 \
            "$ctr" -- /usr/local/bin/fusionrec-entrypoint "$@"
    }
fi
echo "smoke: image $IMAGE, $size; work dir $HOST"

step() {  # step NAME COMMAND...: run it in the image, print its time
    name=$1; shift
    start=$(date +%s)
    run "$@" >"$HOST/$name.log" 2>&1 || { echo "error: smoke: $name failed; its log: $HOST/$name.log" >&2; tail -20 "$HOST/$name.log" >&2; exit 1; }
    echo "smoke: $name $(( $(date +%s) - start )) s"
}
step generate python -m fusionrec.datasets.synthetic --config configs/demo.yaml --out /work/data --rows 40000
step train -m fusionrec.pipeline.train --config configs/demo.yaml --train-data /work/data/train --run-dir /work/run \
    --set data.batch_size=64 --max-steps 250
step evaluate python -m fusionrec.pipeline.evaluate --config configs/demo.yaml --checkpoint /work/run \
    --data /work/data/eval --out /work/eval.json --no-plots
step export python -m fusionrec.pipeline.export --config configs/demo.yaml --checkpoint /work/run --out /work/export
step predict python -m fusionrec.pipeline.predict --model /work/export --data /work/data/eval --out /work/predictions.parquet

"$PYTHON" - "$HOST" <<'PY'
import json, math, sys
from pathlib import Path
import pyarrow.parquet as pq
host = Path(sys.argv[1])
tasks = json.loads((host / "eval.json").read_text())["tasks"]
aucs = {t: m["auc"] for t, m in tasks.items() if "auc" in m}
assert aucs and all(math.isfinite(a) and 0 < a < 1 for a in aucs.values()), aucs
eval_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((host / "data" / "eval").glob("*.parquet")))
predicted = pq.ParquetFile(host / "predictions.parquet").metadata.num_rows
assert predicted == eval_rows, (predicted, eval_rows)
print(f"smoke: passed: eval AUC {', '.join(f'{t} {a:.4f}' for t, a in aucs.items())}; "
      f"predict wrote {predicted} rows for {eval_rows} eval rows")
PY
