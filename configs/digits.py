"""The built-in demo: scikit-learn's 1,797 handwritten digits, no download, a few CPU minutes.

  python -m ucsh_jax.main --config=configs/digits.py --workdir=runs/digits

The hash layer and the VAE decoder train on the flattened 8x8 pixels (`model.backbone =
"none"`) behind a trainable top, with the options of `configs/features.py`: the hash layer
starts as ITQ, L_2's targets are cosine neighbour ranks, no clustering term. 300 queries, the
other 1,497 images as the database, 1,000 of them for training. Same losses and epoch loop as
the paper's configs.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.num_epochs = 30
  config.batch_size = 64
  config.num_clusters = 10
  config.optimizer.learning_rate = 1e-3
  config.optimizer.decay_every_epochs = 1000  # Constant learning rate.
  config.optimizer.feature_lr_scale = 0.1
  config.loss.beta = 0.0
  config.similarity.target = "neighbours"
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
  return config
