"""Training and evaluation jobs: config, distributed set-up, train loop, checkpoints, metrics.

Holds no model math: it wires ``datasets`` (batches), ``models`` (the network) and
``sharding`` (plans) into jobs run by torchrun or as a single process.
"""

from fusionrec.stack import check_stack

check_stack()  # before anything imports torchrec or fbgemm_gpu
