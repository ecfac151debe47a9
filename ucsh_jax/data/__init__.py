"""Input pipeline: tfds builders (prepared without TensorFlow), protocol splits, grain iterators.

  source = get_source(config.data)
  splits = make_splits(config.data, source, seed=config.seed, workdir=workdir)
  it = train_iterator(source, splits.train, global_batch_size=..., image_size=...,
                      preprocessing=..., seed=config.seed)
  for batch in eval_batches(source, splits.query, batch_size=..., image_size=...,
                            preprocessing=...): ...
"""

from ucsh_jax.data.images import CorruptImageError
from ucsh_jax.data.pipeline import eval_batches
from ucsh_jax.data.pipeline import train_iterator
from ucsh_jax.data.sources import get_source
from ucsh_jax.data.sources import Source
from ucsh_jax.data.splits import make_splits
from ucsh_jax.data.splits import Splits

__all__ = ["CorruptImageError", "Source", "Splits", "eval_batches", "get_source", "make_splits",
           "train_iterator"]
