"""Multi-task ranking models: embeddings, bottoms (shared, DTRN), fusions (AdaTT, AdaTT-sp,
PLE, MMoE, ML-MMoE, cross-stitch, shared-bottom), towers, losses.

Public entry: :func:`build_model`. Models know nothing of files, ranks or optimizers.
docs/models.md describes the equations, the config and the introspection API.
"""

from fusionrec.stack import check_stack

check_stack()  # before anything imports torchrec or fbgemm_gpu

from fusionrec.models.multitask import MultiTaskModel, build_model

__all__ = ["MultiTaskModel", "build_model"]
