# Issue 30, last call of the session: does the second recall design (random frequent-token spans)
# start copying on the small preset within ~500 steps? A shortened base stage, then the diagnosis.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
tar -xJf .device/cache.tar.xz -C /tmp && export REFTRAIN_CACHE=/tmp/cache
timeout 170 python3 -m reftrain.run --preset small --phase 0 --run-dir /tmp/short --set stages=2048x32000x64 \
  --max-seconds 130 --save-every 100 --keep 10 --no-progress 2>&1 | grep -v absl | tail -3
mkdir -p $OUT && cp /tmp/short/phase0/metrics.jsonl $OUT/short_metrics.jsonl
last=$(ls /tmp/short/phase0/checkpoints | sort -n | tail -1)
timeout 60 python3 analyses/results/recipe_in_miniature/diagnose.py /tmp/short/phase0 2048 $last 2>&1 | grep "^\["
