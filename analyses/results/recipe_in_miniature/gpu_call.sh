# Issue 30: the recipe in miniature on one GPU, call after call (each resumes /tmp/recipe while the
# machine stays warm). Run from the repository root with .device/cache.tar.xz carried.
set -x
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
[ -d /tmp/cache ] || tar -xJf .device/cache.tar.xz -C /tmp
export REFTRAIN_CACHE=/tmp/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax; print('versions', jax.__version__, flax.__version__, jax.devices()[0].device_kind)"
git log -1 --format=%h 2>/dev/null
timeout ${CALL_SECONDS:-570} python3 analyses/recipe_in_miniature.py --run-dir /tmp/recipe --seconds ${TRAIN_SECONDS:-530} \
  --depths 0,50,100 --trials 4 --require-base 0.9 "$@" 2>&1 | grep -v "^niah rope_dtype" | tail -60
python3 analyses/recipe_in_miniature.py --run-dir /tmp/recipe --report --out-dir $OUT 2>&1 | tail -20
mkdir -p $OUT/run && cp -r /tmp/recipe/recipe.json /tmp/recipe/niah $OUT/run/ 2>/dev/null
for p in /tmp/recipe/phase*; do mkdir -p $OUT/run/$(basename $p) && cp $p/metrics.jsonl $p/config.json $OUT/run/$(basename $p)/; done
