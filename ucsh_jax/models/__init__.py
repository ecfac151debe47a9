"""Flax VGG16, the UCSH network, and ImageNet VGG16 weights converted on load."""

from ucsh_jax.models.download import download_pretrained
from ucsh_jax.models.pretrained import load_pretrained
from ucsh_jax.models.safe_pickle import UnsafePickleError
from ucsh_jax.models.ucsh import HashHead
from ucsh_jax.models.ucsh import UCSH
from ucsh_jax.models.ucsh import with_pretrained_backbone
from ucsh_jax.models.vgg import adaptive_avg_pool
from ucsh_jax.models.vgg import VGG16
from ucsh_jax.models.vgg import vgg16_param_shapes

__all__ = (
    "HashHead",
    "UCSH",
    "UnsafePickleError",
    "VGG16",
    "adaptive_avg_pool",
    "download_pretrained",
    "load_pretrained",
    "vgg16_param_shapes",
    "with_pretrained_backbone",
)
