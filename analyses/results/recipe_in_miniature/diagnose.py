import sys, os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from reftrain.train.checkpoint import load_phase_params
from reftrain.data import load_tokenizer, load_corpora, DEFAULT_SPEC, RecallBatchIterator
from reftrain.eval.probe import answer_accuracy, NeedleProbe
run, seq = sys.argv[1], int(sys.argv[2])
t = load_tokenizer(); c = load_corpora(DEFAULT_SPEC, t)
for step in sys.argv[3:]:
    config, params = load_phase_params(run, step=int(step))
    out = [step]
    for d in (0, 1):
        it = RecallBatchIterator(t, c, batch_size=16, seq_len=seq, seed=999, warmup_rows=0 if d else 10**9)
        out.append(round(answer_accuracy(config, params, next(it)), 3))
    out.append(NeedleProbe(t, length=seq, trials=16)(config, params))
    print(out, flush=True)
