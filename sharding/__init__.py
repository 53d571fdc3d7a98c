"""Sharding plans: planner topology, per-table constraints, plans, and DMP wrapping.

Plans embedding tables onto ranks with TorchRec's EmbeddingShardingPlanner; trains nothing.
"""

from fusionrec.stack import check_stack

check_stack()  # before anything imports torchrec or fbgemm_gpu
