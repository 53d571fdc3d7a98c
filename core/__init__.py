"""fusionrec: multi-task recommendation training on TorchRec.

One import namespace: ``fusionrec.datasets`` (schema, Parquet reading), ``fusionrec.models``
(embeddings, DTRN, AdaTT and the baselines), ``fusionrec.sharding`` (planner, plan reports) and
``fusionrec.pipeline`` (the job recipe, train, evaluate, plan and the other entry points). This
package itself (the repository's ``core/`` folder) holds what they all share and may import
without pulling in torch: the software-stack check (:mod:`fusionrec.stack`), user-facing errors
(:mod:`fusionrec.errors`), the typed YAML loader (:mod:`fusionrec.typedconfig`) and the
``fusionrec`` command (:mod:`fusionrec.cli`, also ``python -m fusionrec``).
"""

__version__ = "0.1.0"
