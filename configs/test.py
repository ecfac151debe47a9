"""A CPU-friendly test configuration: tiny network, 32x32 digits, two short epochs."""

from configs import digits


def get_config():
  config = digits.get_config()
  config.num_epochs = 2
  config.batch_size = 16
  config.bits = 8
  config.num_clusters = 4
  config.kmeans_iters = 5
  config.threshold_samples = 128
  config.model.backbone = "vgg16"
  config.model.top = "none"  # The VGG16's own fc7 plays that role.
  config.model.hash_init = "random"
  config.similarity.target = "cosine"
  config.loss.beta = 10.0
  config.optimizer.feature_lr_scale = 1.0
  config.model.width = 1 / 32
  config.model.decoder_hidden = 16
  config.data.image_size = 32
  config.data.num_query = 40
  config.data.num_train = 64
  config.data.num_database = 160
  config.eval.batch_size = 64
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.checkpoint_every_epochs = 1
  return config
