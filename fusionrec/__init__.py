"""fusionrec: multi-task recommendation training on TorchRec.

The importable packages are ``datasets``, ``models``, ``sharding`` and ``pipeline``;
this package holds what they share: the software-stack check (:mod:`fusionrec.stack`),
the typed YAML loader (:mod:`fusionrec.typedconfig`) and the ``fusionrec`` console script.
"""

__version__ = "0.1.0"
