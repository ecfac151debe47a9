"""The built-in demo: scikit-learn's 1,797 handwritten digits, no download, a few CPU minutes.

  python -m ucsh_jax.main --config=configs/digits.py --workdir=runs/digits

A narrow VGG16 (width 1/8) from random initialisation on 32x32 images; 300 queries, the other
1,497 images as the database, 1,000 of them for training. Same losses and epoch loop as the
paper's configs.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.num_epochs = 10
  config.batch_size = 64
  config.num_clusters = 10
  config.optimizer.learning_rate = 3e-3
  config.optimizer.decay_every_epochs = 8
  config.model.backbone = "none"
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
  config.checkpoint_every_steps = 100
  return config
