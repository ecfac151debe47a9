#!/usr/bin/env bash
# Regenerates the paper's Table 1 (the shallow baselines SH, ITQ, LSH, SpH, the deep methods and
# UCSH: MAP@5000 on CIFAR-10, NUS-WIDE and MIRFLICKR-25K at 16, 32 and 64 bits) and Table 2 (the
# ablations UCSH-V, -C, -S, -R), then collects every result into ROOT/results.md.
#
#   launch/reproduce_paper.sh ROOT WEIGHTS CIFAR_DIR NUSWIDE_DIR MIRFLICKR_DIR
#
#   ROOT           every run gets its own workdir under it: ROOT/<dataset>/ucsh_<bits> (UCSH),
#                  ROOT/<dataset>/ucsh-<V|C|S|R>_<bits> (ablations), ROOT/<dataset>/baselines,
#                  ROOT/<dataset>/<method>_<bits> (the other methods, configs/<method>.py);
#                  <dataset> is cifar, nuswide or mirflickr (the config file's name)
#   WEIGHTS        ImageNet VGG16 weights: torchvision vgg16-397923af.pth, timm model.safetensors
#                  or Keras vgg16_weights_tf_dim_ordering_tf_kernels.h5
#   CIFAR_DIR      folder with cifar-10-python.tar.gz ("" lets tfds download it)
#   NUSWIDE_DIR    NUS-WIDE folder: ImageList/Imagelist.txt, Groundtruth/AllLabels/ and the images
#   MIRFLICKR_DIR  MIRFLICKR-25K folder: mirflickr/im*.jpg and the label files
# Environment (all optional):
#   DATASETS   which datasets, default "cifar nuswide mirflickr"
#   BITS       which code lengths, default "16 32 64"
#   TABLES     "1 2" (default) or "1" (no ablation runs) or "2" (no baseline or method runs)
#   METHODS    the other methods of Table 1, default every one of ucsh_jax.methods.NAMES
#   DATA_DIR   tfds data directory for the prepared datasets (default: tfds's own)
#   PYTHON     interpreter, default python
#   LAUNCH     command prefix for every run, e.g. "srun" for a multi-host SLURM allocation
#   DRY_RUN=1  print the commands without running them
# Each run uses every local accelerator. A run whose workdir already holds its results file is
# skipped, and an interrupted UCSH run resumes from its last checkpoint, so the script can simply
# be started again. The full set is 45 UCSH runs (9 for Table 1, 36 more for Table 2) of about
# an hour each on one modern GPU, 9 runs for each other method, plus 3 baseline runs (feature
# extraction and shallow fits).
set -euo pipefail
if [[ $# -ne 5 ]]; then
  echo "usage: launch/reproduce_paper.sh ROOT WEIGHTS CIFAR_DIR NUSWIDE_DIR MIRFLICKR_DIR" >&2
  exit 2
fi
root="$1"
weights="$2"
declare -A manual_dir=([cifar]="$3" [nuswide]="$4" [mirflickr]="$5")
read -r -a datasets <<< "${DATASETS:-cifar nuswide mirflickr}"
read -r -a bits_list <<< "${BITS:-16 32 64}"
tables="${TABLES:-1 2}"
python="${PYTHON:-python}"
read -r -a launch <<< "${LAUNCH:-}"
dry_run="${DRY_RUN:-}"

if [[ -z "$dry_run" && ! -f "$weights" ]]; then
  echo "WEIGHTS: no file $weights (see README: pretrained VGG16 weights)" >&2
  exit 2
fi
for dataset in "${datasets[@]}"; do
  if [[ -z "${manual_dir[$dataset]+set}" ]]; then
    echo "DATASETS: unknown dataset $dataset (expected cifar, nuswide or mirflickr)" >&2
    exit 2
  fi
done

# run RESULT_FILE COMMAND...: runs COMMAND unless RESULT_FILE exists.
run() {
  local result="$1"
  shift
  if [[ -f "$result" ]]; then
    echo "skip (done): $result"
    return
  fi
  echo "+ $*"
  if [[ -z "$dry_run" ]]; then
    "$@"
  fi
}

for dataset in "${datasets[@]}"; do
  config="configs/${dataset}.py"
  flags=("--config.model.pretrained=$weights")
  if [[ -n "${manual_dir[$dataset]}" ]]; then
    flags+=("--config.data.manual_dir=${manual_dir[$dataset]}")
  fi
  if [[ -n "${DATA_DIR:-}" ]]; then
    flags+=("--config.data.data_dir=$DATA_DIR")
  fi
  if [[ "$tables" == *1* ]]; then
    workdir="$root/$dataset/baselines"
    bits_csv="$(IFS=,; echo "${bits_list[*]}")"
    run "$workdir/baselines.json" "${launch[@]}" "$python" -m ucsh_jax.baselines \
      --config="$config" --workdir="$workdir" --bits="$bits_csv" "${flags[@]}"
  fi
  if [[ "$tables" == *1* ]]; then
    methods="${METHODS:-$("$python" -c 'from ucsh_jax import methods; print(*methods.NAMES)')}"
    # The other methods' configs start from CIFAR-10: the dataset's fields come from its config.
    read -r -a data_flags <<< "$("$python" -c "from configs import $dataset as c
d = c.get_config().data
print(f'--config.data.name={d.name} --config.data.num_query={d.num_query} '
      f'--config.data.num_train={d.num_train}')")"
    for method in $methods; do
      [[ "$method" == ucsh ]] && continue
      for bits in "${bits_list[@]}"; do
        workdir="$root/$dataset/${method}_$bits"
        run "$workdir/results.json" "${launch[@]}" "$python" -m ucsh_jax.main \
          --config="configs/$method.py" --workdir="$workdir" --config.bits="$bits" \
          "${data_flags[@]}" "${flags[@]}"
      done
    done
  fi
  variants=("")
  if [[ "$tables" == *2* ]]; then
    variants+=(V C S R)
  fi
  for bits in "${bits_list[@]}"; do
    for ablation in "${variants[@]}"; do
      workdir="$root/$dataset/ucsh${ablation:+-$ablation}_$bits"
      extra=()
      if [[ -n "$ablation" ]]; then
        extra=("--config.ablation=$ablation")
      fi
      run "$workdir/results.json" "${launch[@]}" "$python" -m ucsh_jax.main \
        --config="$config" --workdir="$workdir" --config.bits="$bits" "${extra[@]}" "${flags[@]}"
    done
  done
done

if [[ -n "$dry_run" ]]; then
  echo "+ $python -m ucsh_jax.tables $root"
else
  "$python" -m ucsh_jax.tables "$root"
fi
