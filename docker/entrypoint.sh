#!/bin/sh
# fusionrec's container entrypoint (also used as is by docker/slurm/train.sbatch).
#
#   fusionrec-entrypoint -m fusionrec.pipeline.train --config ... --run-dir ...  -> fusionrec train [cluster options] -m fusionrec.pipeline.train ...
#   fusionrec-entrypoint -m OTHER.MODULE ...                                     -> torchrun [cluster options] -m OTHER.MODULE ...
#   fusionrec-entrypoint python -m fusionrec.pipeline.plan ...                   -> runs the command as given
#
# Arguments that start with "-" go to torchrun after its own options; anything else is run as
# a plain command. Training goes through the `fusionrec train` launcher, which checks the config
# and the data in one process before it starts torchrun with these options, reports a worker's
# config or data error as one line (exit 2), and turns SIGTERM / SIGUSR1 into a checkpoint and
# exit 0 (docs/reliability.md). torchrun's options come from the usual cluster variables:
#
#   MASTER_ADDR     host of the c10d rendezvous (node 0). Unset and NNODES=1: --standalone.
#   MASTER_PORT     its port (default 29500)
#   NNODES          number of nodes (default 1), or MIN:MAX for an elastic job
#   NODE_RANK       this node's index; node 0 hosts the rendezvous store (c10d numbers the
#                   ranks itself). Unset: torchrun decides by matching MASTER_ADDR to this host.
#   NPROC_PER_NODE  processes per node (default: every visible GPU in the cuda image, 1 in the cpu one)
#   RDZV_ID         job id, the same on every node (default: SLURM_JOB_ID, else "fusionrec")
#   MAX_RESTARTS    torchrun --max-restarts (default 0)
#   RDZV_JOIN_TIMEOUT  seconds to wait for every node to join (default: torchrun's)
#   LOCAL_ADDR      the address this node advertises to the others (torchrun --local-addr;
#                   default: torchrun looks up this host's name, which must then resolve)
#
# When a plain name is unset, the variables set by Kubeflow's training operator (PET_NNODES,
# PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR, PET_MASTER_PORT, and the pod-level RANK)
# and by Slurm (SLURM_NODEID, SLURM_JOB_ID) are used.
set -eu

case "${1:-}" in
    -*) ;;
    "") set -- -m fusionrec.pipeline.train --help ;;
    *) exec "$@" ;;
esac

master_addr="${MASTER_ADDR:-${PET_MASTER_ADDR:-}}"
master_port="${MASTER_PORT:-${PET_MASTER_PORT:-29500}}"
nnodes="${NNODES:-${PET_NNODES:-1}}"
node_rank="${NODE_RANK:-${PET_NODE_RANK:-${SLURM_NODEID:-${RANK:-}}}}"
if [ "${FUSIONREC_DEVICE:-cuda}" = cpu ]; then default_nproc=1; else default_nproc=gpu; fi
nproc="${NPROC_PER_NODE:-${PET_NPROC_PER_NODE:-$default_nproc}}"
rdzv_id="${RDZV_ID:-${SLURM_JOB_ID:-fusionrec}}"
max_restarts="${MAX_RESTARTS:-0}"
if [ "${1:-}" = -m ] && [ "${2:-}" = fusionrec.pipeline.train ]; then
    launch="fusionrec train"
else
    launch=torchrun
fi
if [ -n "${LOCAL_ADDR:-}" ]; then
    set -- --local-addr "$LOCAL_ADDR" "$@"
fi

if [ -z "$master_addr" ]; then
    if [ "$nnodes" != 1 ]; then
        echo "fusionrec-entrypoint: NNODES=$nnodes needs MASTER_ADDR, the host of node 0" >&2
        exit 2
    fi
    # shellcheck disable=SC2086  # $launch is one or two words
    exec $launch --standalone --nnodes 1 --nproc-per-node "$nproc" --max-restarts "$max_restarts" "$@"
fi

conf=""
if [ -n "$node_rank" ]; then
    if [ "$node_rank" = 0 ]; then conf="is_host=true"; else conf="is_host=false"; fi
fi
if [ -n "${RDZV_JOIN_TIMEOUT:-}" ]; then
    conf="${conf:+$conf,}join_timeout=$RDZV_JOIN_TIMEOUT"
fi
if [ -n "$conf" ]; then
    set -- --rdzv-conf "$conf" "$@"
fi
# shellcheck disable=SC2086
exec $launch \
    --nnodes "$nnodes" \
    --nproc-per-node "$nproc" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$master_addr:$master_port" \
    --rdzv-id "$rdzv_id" \
    --max-restarts "$max_restarts" \
    "$@"
