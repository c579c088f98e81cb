# Issue 29, third device call: real compile, peak and a deviceless compile on this host (jax 0.11.2)
# of the steps whose prediction was off, with the peak of the first run only.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
pip list 2>/dev/null | grep -i -E "^jax|nvidia-cuda-nvcc|cuda-plugin|pjrt"
timeout 580 python3 analyses/hloscope_vs_gpu.py measure --out-dir $OUT --only "attention 32K" \
  "train-step 6L 40K save_dots_attention" "small base step 64x2K" "train-step 8L 272K full" 2>&1 | grep -v '^{' | tail -12
