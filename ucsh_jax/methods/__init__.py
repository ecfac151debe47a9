"""Hashing methods on one shared pipeline: a method is one module (see `base.Method`)."""

import jax
import ml_collections

from ucsh_jax import errors
from ucsh_jax.methods import base
from ucsh_jax.methods import bihalf
from ucsh_jax.methods import deepbit
from ucsh_jax.methods import distillhash
from ucsh_jax.methods import greedyhash
from ucsh_jax.methods import ssdh
from ucsh_jax.methods import tbh
from ucsh_jax.methods import ucsh
from ucsh_jax.methods.base import Context
from ucsh_jax.methods.base import MAIN_GROUP
from ucsh_jax.methods.base import Method

# config.method -> its class; Table 1's deep rows in the paper's order, then the others.
METHODS = {cls.name: cls for cls in (deepbit.DeepBit, ssdh.SSDH, distillhash.DistillHash,
                                      ucsh.UCSH, tbh.TBH, greedyhash.GreedyHash, bihalf.BiHalf)}
NAMES = tuple(METHODS)
# Table 2: UCSH's ablations.
ABLATION_LABELS = ucsh.ABLATION_LABELS


def row_label(name: str, ablation: str = "") -> str:
  """The row of a run of method `name` in tables and reports ("UCSH-V" for UCSH's ablation V)."""
  if name == ucsh.UCSH.name:
    return ABLATION_LABELS.get(ablation, f"UCSH-{ablation}")
  return METHODS[name].title if name in METHODS else name


def method_class(config: ml_collections.ConfigDict) -> type:
  """The class of `config.method` (a UserError listing the names if there is none)."""
  if config.method not in METHODS:
    raise errors.UserError(f"config.method={config.method!r} is no method; expected one of "
                           f"{', '.join(NAMES)}")
  return METHODS[config.method]


def build(config: ml_collections.ConfigDict, feature_dim: int, key: jax.Array) -> Method:
  """The run's method: `config.method` for features x of width `feature_dim`."""
  return method_class(config)(config, feature_dim, key)


__all__ = ("ABLATION_LABELS", "Context", "MAIN_GROUP", "METHODS", "Method", "NAMES", "base",
           "build", "method_class", "row_label")
