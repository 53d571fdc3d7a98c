"""Feature logs: the feature schema, Parquet reading and batching, synthetic and public data.

Owns everything that touches data files. Knows nothing of models or of torch.distributed
beyond the rank and world size it is told.
"""

from fusionrec.stack import check_stack

check_stack()  # before anything imports torchrec or fbgemm_gpu
