"""The paper's setting on a CPU: an ImageNet VGG16 conv base fine-tuned on CIFAR-10 images.

  python -m ucsh_jax.main --config=configs/finetune.py --workdir=runs/finetune \
      --config.data.manual_dir=/data/cifar \
      --config.model.pretrained=/weights/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5

The Keras notop file (`keras_notop`: the conv base alone, Caffe preprocessing) ends in the
average of conv5_3's ReLU output before block 5's max-pool (`model.pooling`), then the trainable
top relu(W x + b) with W = I at the start and the hash layer. Images are resized to 64 x 64;
conv1_1 .. conv4_3 stay frozen and their outputs are computed once per image and cached
(`model.trainable_from`), so each epoch trains conv5_1 .. conv5_3, the top and the hash layer on
4 x 4 maps. Every epoch the eval-mode features of the fine-tuned network give new neighbour
targets, clusters and s_t. Learning rates: hash layer and decoder 1e-3, top 1e-4
(`feature_lr_scale`), conv5 1e-5 (`backbone_lr_scale`). The other options are those of
`configs/features.py` (neighbour targets, ITQ start, no clustering term).

The splits default to 500 queries and 1,000 training images, drawn per class from the seed
(CIFAR-10's paper protocol is 1,000 and 5,000: set `data.num_query` and `data.num_train`);
`--config.data.splits_file=FILE` (an .npz with query_idx, database_idx, train_idx) uses given
ones. MAP@1000 (`eval.topk`).
"""

from configs import base
from configs import features


def get_config():
  config = features.get_config()
  base.use_finetune(config)
  return config
