"""NUS-WIDE (10 most frequent concepts) with the paper's settings.

  python -m ucsh_jax.main --config=configs/nuswide.py --workdir=runs/nus16 \
      --config.data.manual_dir=/data/nus-wide --config.model.pretrained=/path/to/vgg16.pth

The manual directory holds `ImageList/Imagelist.txt`, `Groundtruth/AllLabels/` and the images
(or a `<path> <0/1 labels>` list file); see the README.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.num_clusters = 30
  config.data.name = "nus_wide"
  config.data.num_query = 5000
  config.data.num_train = 5000
  return config
