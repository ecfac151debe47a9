"""MIRFLICKR-25K (images with one of the 24 labels) with the paper's settings.

  python -m ucsh_jax.main --config=configs/mirflickr.py --workdir=runs/mir16 \
      --config.data.manual_dir=/data/mirflickr --config.model.pretrained=/path/to/vgg16.pth

The manual directory holds `mirflickr/im*.jpg` and the annotation label files; see the README.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.num_clusters = 30
  config.data.name = "mirflickr"
  config.data.num_query = 2000
  config.data.num_train = 10000
  return config
