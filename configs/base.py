"""The fields every method's config has, and the schedules of the data settings.

`get_config(variant)` is CIFAR-10 images with the paper's schedule (variant None), or one of
the settings below applied to it; a method's config adds `config.method` and its own group
(configs/cifar.py adds UCSH's fields).
"""

from typing import Optional

import ml_collections

VARIANTS = ("features", "digits", "finetune")


def get_config(variant: Optional[str] = None) -> ml_collections.ConfigDict:
  """The shared fields: CIFAR-10 images, or `variant` (one of VARIANTS)."""
  if variant not in (None, "") + VARIANTS:
    raise ValueError(f"expected no variant or one of {VARIANTS}, got {variant!r}")
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds the splits, the initialisation, dropout, the method and shuffling.
  config.method = "ucsh"  # The hashing method (ucsh_jax.methods.NAMES); its fields: config.<method>.
  config.bits = 16  # Code length k: 16, 32 or 64 in the paper.
  config.batch_size = 24  # Global batch over all devices and hosts (the paper's 24).
  config.num_epochs = 50

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # "adam" or "sgd" (with momentum); the paper names none.
  config.optimizer.learning_rate = 1e-5  # The paper's initial learning rate.
  config.optimizer.decay_every_epochs = 20  # Step decay: lr * decay_factor every this many epochs.
  config.optimizer.decay_factor = 0.1
  config.optimizer.momentum = 0.9  # Used by "sgd" only.
  config.optimizer.weight_decay = 0.0  # Decoupled weight decay (0 disables it).
  # Learning-rate multiplier of the parameters that produce the features (VGG16 or model.top).
  config.optimizer.feature_lr_scale = 1.0
  # The VGG16's learning rate relative to the features' (model.top's) rate.
  config.optimizer.backbone_lr_scale = 1.0

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "vgg16"  # "vgg16", or "none": hash the flattened pixels directly.
  config.model.pretrained = ""  # VGG16 weights file (.pth, .safetensors or .h5); "" = random init.
  config.model.width = 1.0  # Channel multiplier of VGG16 (1.0 is the real network).
  config.model.pooled_size = 7  # Adaptive average pool size before fc6 (7 in VGG16).
  # What the VGG16 ends in: "fc7" (fc6 and fc7 after the adaptive pool: torchvision's network),
  # or a global average pool of conv5_3's ReLU output before block 5's max-pool
  # ("avg_conv5_3") or after it ("avg_pool5"), for conv-base (notop) weights.
  config.model.pooling = "fc7"
  # The first VGG16 layer that trains ("conv5_1", ...; "" = all). The layers below are frozen
  # and their outputs computed once per image and reused (a cache keyed by content).
  config.model.trainable_from = ""
  config.model.prefix_cache_dir = ""  # Where that cache lives ("" = WORKDIR/prefix_cache).
  config.model.decoder_hidden = 1024  # Hidden width of the VAE decoder.
  config.model.dropout_rate = 0.5
  # Without fc7 (feature files, backbone "none", an average pooling): "fc" puts a trainable
  # relu(W x + b), W = I at the start, between the inputs and the hash layer (the role of fc7);
  # "none" hashes the inputs themselves.
  config.model.top = "none"
  config.model.hash_init = "random"  # "random", or "itq": the hash layer starts as ITQ.
  config.model.code_activation = "sign"  # "sign" (straight-through) or "tanh" (as UCSH-R).
  config.model.dtype = "float32"  # Computation dtype: "float32" or "bfloat16" (params stay f32).

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"  # digits | cifar10 | nus_wide | mirflickr | image_folder | features
  config.data.path = ""  # Image folder or feature file (.npz) for image_folder / features.
  config.data.manual_dir = ""  # Where manually downloaded archives live ("" = tfds default).
  config.data.data_dir = ""  # tfds data directory ("" = tfds default).
  config.data.image_size = 224  # Images are resized to image_size x image_size.
  config.data.num_query = 1000  # 100 per class.
  config.data.num_train = 5000  # 500 per class, drawn from the database.
  config.data.num_database = -1  # -1: every image that is not a query (59,000).
  # An .npz with query_idx, database_idx, train_idx (positions in the data set) to use instead
  # of drawing the splits ("" = draw them from the seed).
  config.data.splits_file = ""
  config.data.top_concepts = 10  # NUS-WIDE: keep images with one of the most frequent concepts.
  config.data.skip_corrupt = False  # True: skip unreadable images (counted in the log).
  config.data.num_workers = 4  # grain worker processes (0 = in the main process).

  # Training features used to estimate the similarity thresholds (UCSH's s_t, SSDH's pair).
  config.threshold_samples = 2000

  config.eval = ml_collections.ConfigDict()
  config.eval.topk = 5000  # MAP@topk; -1 = the whole database.
  config.eval.every_epochs = 10  # Also evaluate every this many epochs (0 = only at the end).
  config.eval.batch_size = 96  # Global batch for feature extraction and encoding.

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500  # Also saved every checkpoint_every_epochs and at the end.
  config.checkpoint_every_epochs = 1
  config.checkpoints_to_keep = 2
  if variant:
    {"features": use_features, "digits": use_digits, "finetune": use_finetune}[variant](config)
  return config


def use_features(config: ml_collections.ConfigDict) -> None:
  """A feature file (`data.path`): a trainable top (the role of fc7) and the head train on
  the vectors; the hash layer starts as ITQ; batch 256, constant learning rate 1e-3 (the top
  at a tenth), 60 epochs."""
  config.num_epochs = 60
  config.batch_size = 256
  config.optimizer.learning_rate = 1e-3
  config.optimizer.decay_every_epochs = 1000  # Constant learning rate.
  config.optimizer.feature_lr_scale = 0.1
  config.model.top = "fc"
  config.model.hash_init = "itq"
  config.model.dropout_rate = 0.0
  config.data.name = "features"
  config.data.num_workers = 0
  config.eval.batch_size = 1024
  config.eval.every_epochs = 0
  config.checkpoint_every_steps = 100000
  config.checkpoint_every_epochs = 1000  # Only at the end (and every checkpoint_every_steps).


def use_digits(config: ml_collections.ConfigDict) -> None:
  """scikit-learn's 1,797 8x8 digits, no download: the head behind a trainable top on the
  flattened pixels (`model.backbone = "none"`), 300 queries, 1,000 training images, 30
  epochs of batch 64, MAP over the whole database."""
  config.num_epochs = 30
  config.batch_size = 64
  config.optimizer.learning_rate = 1e-3
  config.optimizer.decay_every_epochs = 1000  # Constant learning rate.
  config.optimizer.feature_lr_scale = 0.1
  config.model.backbone = "none"
  config.model.top = "fc"
  config.model.hash_init = "itq"
  config.model.width = 0.125  # Used when --config.model.backbone=vgg16.
  config.model.pooled_size = 1
  config.model.decoder_hidden = 256
  config.model.dropout_rate = 0.0
  config.data.name = "digits"
  config.data.image_size = 8  # The digits' own size; at least 32 with the VGG16 backbone.
  config.data.num_query = 300
  config.data.num_train = 1000
  config.data.num_workers = 0
  config.eval.topk = -1
  config.eval.every_epochs = 0
  config.eval.batch_size = 256
  config.log_every_steps = 15
  config.checkpoint_every_steps = 100000
  config.checkpoint_every_epochs = 1000  # Only at the end (and every checkpoint_every_steps).


def use_finetune(config: ml_collections.ConfigDict) -> None:
  """The feature-file schedule on CIFAR-10 images through the Keras notop VGG16 conv base
  (configs/finetune.py): 64 x 64 images, conv1_1 .. conv4_3 frozen and cached, conv5 at a
  hundredth of the head's learning rate, 20 epochs, 500 queries, 1,000 training images,
  MAP@1000."""
  use_features(config)
  config.num_epochs = 20
  config.data.name = "cifar10"
  config.data.image_size = 64
  config.data.num_query = 500
  config.data.num_train = 1000
  config.model.backbone = "vgg16"
  config.model.pretrained = "keras_notop"
  config.model.pooling = "avg_conv5_3"
  config.model.trainable_from = "conv5_1"
  config.optimizer.backbone_lr_scale = 0.1  # conv5 at 0.1 x 0.1 x 1e-3 = 1e-5.
  config.eval.topk = 1000
  config.eval.batch_size = 256
  config.checkpoint_every_epochs = 5
