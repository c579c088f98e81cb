# Issue 29, second device call: the longest plan `hloscope search` found to fit an H100 (8 layers,
# full remat), and one forced 5% over the card, each through `reftrain.run --plan` with no XLA_* set.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
tar -xJf .device/cache.tar.xz -C /tmp && export REFTRAIN_CACHE=/tmp/cache
python3 analyses/plan_runs.py analyses/results/plan_runs/plan_fit.json analyses/results/plan_runs/plan_over.json \
  --layers 8 --timeout 420 --out-dir $OUT 2>&1 | tail -20
