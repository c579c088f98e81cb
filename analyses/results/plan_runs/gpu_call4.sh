# Issue 29, fourth device call: the final code's run of both plans (regenerated on the CPU host),
# and whether XLA's memory limit (on the device: the pool; deviceless: 80% of the config's memory)
# is what keeps a deviceless compile of the 272K step above the real one under jax 0.11.2.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
tar -xJf .device/cache.tar.xz -C /tmp && export REFTRAIN_CACHE=/tmp/cache
for memory in 95645859840 76516687872; do   # bytes_limit / 0.8 (the pool as XLA's limit), bytes_limit
  timeout 150 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python3 analyses/hloscope_vs_gpu.py deviceless-one 8 \
    --device-memory $memory 2>&1 | tail -1
done
python3 analyses/plan_runs.py analyses/results/plan_runs/plan_fit.json analyses/results/plan_runs/plan_over.json \
  --layers 8 --timeout 300 --out-dir $OUT 2>&1 | grep -v '^{' | tail -8
# the small preset's base stage: the loss's token chunk of 2,048 (the preset's) against 16,384
for chunk in 2048 16384; do
  timeout 100 python3 -m reftrain.run --preset small --phase 0 --max-steps 30 --no-checkpoints --no-progress \
    --run-dir /tmp/small$chunk --set loss_chunk=$chunk 2>&1 | tail -1
  python3 -c "import json,statistics,sys; r=[json.loads(l) for l in open('/tmp/small$chunk/phase0/metrics.jsonl')][2:]; print('loss_chunk $chunk', round(statistics.median(x['tokens_per_s'] for x in r)), max(x['peak_bytes'] for x in r), r[-1]['xla_total'])"
done
