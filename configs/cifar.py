"""CIFAR-10 with the paper's settings (UCSH, Table 1).

  python -m ucsh_jax.main --config=configs/cifar.py --workdir=runs/cifar16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16

Needs `cifar-10-python.tar.gz` (downloaded by tfds when online, otherwise put it in
`--config.data.manual_dir`). About 1 h per 50 epochs on one modern GPU. Ablations of Table 2:
`--config.ablation=V` (no VAE), `C` (no clustering), `S` (no separating), `R` (tanh relaxation).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 configuration; the other configs start from this one."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds the splits, the initialisation, dropout, k-means and shuffling.
  config.bits = 16  # Code length k: 16, 32 or 64 in the paper.
  config.batch_size = 24  # Global batch over all devices and hosts (the paper's 24).
  config.num_epochs = 50
  config.num_clusters = 10  # N, the number of k-means clusters (hash centers).
  config.ablation = ""  # "" (full UCSH) or one of "V", "C", "S", "R" (Table 2).

  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1e-3  # Weight of the binary-latent VAE loss L_V.
  config.loss.beta = 10.0  # Weight of the clustering loss L_C.
  config.loss.gamma = 1e-2  # Weight of the similarity separating loss L_S.
  # "paper": the terms are means over the global batch weighted so that the objective equals
  # eq. 7's literal sums at batch loss.reference_batch up to one positive factor (at every code
  # length and device count); "mean": alpha, beta, gamma weight the per-term means directly.
  config.loss.balance = "paper"
  config.loss.reference_batch = 24  # The batch whose literal-sum balance "paper" keeps.

  config.similarity = ml_collections.ConfigDict()
  # Targets S of L_2: "cosine" (S = 2 cos - 1, the paper), "neighbours" (+1 for the
  # num_neighbours nearest training images by cosine, symmetrised, else -1) or "ssdh"
  # (+1 / 0 / -1 from SSDH's two thresholds, 0 ignored).
  config.similarity.target = "cosine"
  # m for "neighbours"; 0 = a tenth of the training set at 16 bits, a twentieth above.
  config.similarity.num_neighbours = 0

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

  config.threshold_samples = 2000  # Training features used to estimate the threshold s_t.
  config.kmeans_iters = 20  # Lloyd iterations per epoch (warm-started).
  config.kmeans_inits = 10  # Greedy k-means++ restarts of the first epoch (later: warm start).
  config.kmeans_metric = "euclidean"  # "euclidean", or "cosine" (spherical k-means).

  config.eval = ml_collections.ConfigDict()
  config.eval.topk = 5000  # MAP@topk; -1 = the whole database.
  config.eval.every_epochs = 10  # Also evaluate every this many epochs (0 = only at the end).
  config.eval.batch_size = 96  # Global batch for feature extraction and encoding.

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500  # Also saved every checkpoint_every_epochs and at the end.
  config.checkpoint_every_epochs = 1
  config.checkpoints_to_keep = 2
  return config
