"""Multi-task ranking models: embeddings, bottoms (shared, DTRN), AdaTT fusion, towers, losses.

Public entry: :func:`build_model`. Models know nothing of files, ranks or optimizers.
"""

from fusionrec.stack import check_stack

check_stack()  # before anything imports torchrec or fbgemm_gpu

from models.multitask import MultiTaskModel, build_model

__all__ = ["MultiTaskModel", "build_model"]
