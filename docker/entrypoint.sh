#!/bin/sh
# Run torchrun from the usual cluster variables, with c10d rendezvous:
#   MASTER_ADDR MASTER_PORT (rendezvous endpoint), NNODES, NODE_RANK, NPROC_PER_NODE.
# Arguments are passed to torchrun after its own, e.g. `-m pipeline.train --config ...`.
set -eu
exec torchrun \
    --nnodes "${NNODES:-1}" \
    --nproc_per_node "${NPROC_PER_NODE:-1}" \
    --node_rank "${NODE_RANK:-0}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
    --rdzv-id "${RDZV_ID:-fusionrec}" \
    --max-restarts "${MAX_RESTARTS:-0}" \
    "$@"
