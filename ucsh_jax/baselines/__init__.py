"""Shallow hashing baselines on fixed features: SH, ITQ, LSH and SpH (Table 1 of the paper).

Each method is a module with

  fit(train_features, num_bits, key, **options) -> params   # (n, d) -> NamedTuple of arrays
  encode(params, features) -> codes                         # (n, d) -> (n, k) +-1 floats

both jitted (`num_bits` and iteration counts are static). `METHODS` maps the names used in
configs and tables to them:

  params = METHODS["itq"].fit(train_features, 32, jax.random.key(0))
  codes = METHODS["itq"].encode(params, database_features)
"""

from typing import Callable, NamedTuple

from ucsh_jax.baselines import itq, lsh, sh, sph


class Method(NamedTuple):
  fit: Callable
  encode: Callable


METHODS = {
    "sh": Method(sh.fit, sh.encode),
    "itq": Method(itq.fit, itq.encode),
    "lsh": Method(lsh.fit, lsh.encode),
    "sph": Method(sph.fit, sph.encode),
}
