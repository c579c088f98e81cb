# Issue 29, first device call: where the 3.1% of the 6-layer 40K step comes from, the runtime's
# excess over XLA's total, and the small preset's base stage after the loss fix.
set -x
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
tar -xJf .device/cache.tar.xz -C /tmp && export REFTRAIN_CACHE=/tmp/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices()[0].device_kind)"
mkdir -p $OUT/hlo
timeout 330 python3 analyses/hloscope_vs_gpu.py measure --out-dir $OUT --hlo-dir $OUT/hlo \
  --only "train-step 6L 40K save_dots_attention" "small base step 64x2K" "attention 32K" 2>&1 | tail -25
(cd $OUT/hlo && tar -cJf ../hlo.tar.xz . && cd .. && rm -rf hlo)
# deviceless on this host (jax 0.11.2), to tell the jax version from the device
timeout 100 python3 -c "
import hloscope
r = hloscope.profile('train-step', target='h100-80gb', devices=1, model='mistral-7b', layers=6, seq=40960, q_chunk=2048, kv_chunk=4096, remat='save_dots_attention')
print('DEVICELESS_0112', r.xla_total)" 2>&1 | tail -3
timeout 150 python3 -m reftrain.run --preset small --phase 0 --max-steps 25 --no-checkpoints --no-progress --run-dir /tmp/small 2>&1 | tail -6
cp /tmp/small/phase0/metrics.jsonl $OUT/small_phase0_metrics.jsonl; cp /tmp/small/phase0/config.json $OUT/small_phase0_config.json
