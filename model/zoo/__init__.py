"""Model zoos: many small CNNs trained with sampled hyperparameters, the training data of SNE.

Submodules, one job each: ``space`` (hyperparameters, split, ids), ``archs`` and ``datasets`` (what is
trained on what), ``engine`` (init, batched forward, per-model gradients), ``optim`` (stacked
optimizers), ``evaluate`` (per-model accuracy), ``group`` (training one group), ``index`` (files on disk,
resume), ``generate`` (the whole zoo), ``permute`` (function-preserving hidden-unit permutations).
"""

from model.zoo.generate import ZooSummary, generate_zoo
from model.zoo.index import load_index, load_zoo_checkpoint

__all__ = ["ZooSummary", "generate_zoo", "load_index", "load_zoo_checkpoint"]
