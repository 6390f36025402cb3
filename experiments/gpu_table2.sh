#!/usr/bin/env bash
# Table 2 at App. D's full schedule on one GPU (issue 15), in two commands of <= 10 minutes:
#   bash experiments/gpu_table2.sh 1 OUTDIR            # rates, plan, Ladder and control arms
#   SEEDS=S bash experiments/gpu_table2.sh 2 OUTDIR    # EBGAN-LN arm, S from part 1's plan
# App. D: Ladder 120,000 steps (lr decay from 80,000); EBGAN-LN 180,000 steps (m 16 -> 0 and G
# off at 60,000, decay from 120,000); the control is the Ladder at EBGAN-LN's D lr 0.0005.
# Seeds 0..S-1 of each of 100, 200 and 1000 labels, on the embedded digits (mnist_10k: 8,000
# train / 2,000 test, not the paper's 60,000 / 10,000), each arm's 3S runs as one population
# (ebgan_jax.ssl_population, vmapped), 100 steps a call.
# Part 1 first times populations of 45 Ladder and 45 EBGAN-LN (G on) runs (the driver's
# program, experiments/benchmark.py --ssl_population_sizes), then picks the largest S <= 15
# whose Ladder + control (part 1) and EBGAN-LN (part 2) runs fit BUDGET_S seconds each, and
# writes OUTDIR/plan.json. Every driver call also stops itself (checkpoints saved, runs
# resumable on the same machine) at the budget: a run not finished then is missing from the
# table, never half-counted. What comes back: per-run results.json and logs/metrics.jsonl
# (test error at every checkpoint), table2.{md,json}, the rates and the logs; checkpoints stay
# in WORKDIR on the machine (too large to return).
# The lent image has jax, flax, optax and orbax but not ml-collections: put its wheel in .whl/.
# It has no TensorFlow either: the driver needs the in-memory (TensorFlow-free) data path.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: [SEEDS=S] bash experiments/gpu_table2.sh 1|2 OUTDIR}
out=${2:?usage: [SEEDS=S] bash experiments/gpu_table2.sh 1|2 OUTDIR}
budget=${BUDGET_S:-540}          # seconds per command, all included, under the 600 s limit
workdir=${WORKDIR:-/tmp/table2}  # run folders (checkpoints) on the machine
mkdir -p "$out" "$workdir"
t0=$(date +%s)
if ! python3 -c 'import ml_collections' 2>/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import experiments.semi_supervised' || { echo 'the driver does not import'; exit 1; }
quiet() { grep -v -e '^W[0-9]' -e '^I[0-9]' -e 'UserWarning' ; }
# The full schedule of each arm, on the embedded digits, 100 steps a call; logs every 2,000
# steps, checkpoints (and the test error) every 40,000 (Ladder) / 60,000 (EBGAN-LN) steps.
common=(--num_labelled=100,200,1000 --workdir="$workdir" --config.dataset=mnist_10k
        --config.steps_per_call=100 --config.log_every_steps=2000
        --config.sample_every_steps=60000)

if [ "$part" = 1 ]; then
  python3 -m experiments.benchmark --configs= --ssl_population_sizes=45 \
    --ssl_population_variants=ladder,ebgan_ln --population_steps_per_call=100 --seconds=3 \
    --rounds=2 --json="$out/rates.json" 2>&1 | quiet | tee "$out/rates.log"
  # S: both parts' work at the measured rates (a population of 3S runs is timed at 45, so the
  # projection is kept to 85% of what is left), and each part pays its compiles again.
  python3 - "$out" "$budget" "$(( $(date +%s) - t0 ))" <<'EOF' | tee "$out/plan.txt"
import json, math, sys
out, budget, spent = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = {r['variant']: r for r in json.load(open(f'{out}/rates.json'))['ssl_populations']}
ladder, on = rows['ladder'], rows['ebgan_ln (G on)']
t_ladder, t_on = 1 / ladder['member_steps_per_s'], 1 / on['member_steps_per_s']
member_ladder = 120_000 * t_ladder                  # seconds of one Ladder (or control) run
member_ebgan = 60_000 * t_on + 120_000 * t_ladder   # one EBGAN-LN run (G off = the Ladder step)
part1 = 0.85 * (budget - spent - 2 * ladder['compile_s'] - 30)
part2 = 0.85 * (budget - 60 - on['compile_s'] - ladder['compile_s'] - 30)
seeds = max(0, min(15, math.floor(part1 / (2 * 3 * member_ladder)),
                   math.floor(part2 / (3 * member_ebgan))))
plan = {'seeds': seeds, 'member_seconds_ladder': member_ladder,
        'member_seconds_ebgan_ln': member_ebgan, 'full_table_seconds':
        45 * (2 * member_ladder + member_ebgan), 'part1_seconds': part1,
        'part2_seconds': part2, 'rates': {k: v['member_steps_per_s'] for k, v in rows.items()}}
json.dump(plan, open(f'{out}/plan.json', 'w'), indent=2)
print(json.dumps(plan, indent=2))
print(f'SEEDS={seeds}')
EOF
  seeds=${SEEDS:-$(python3 -c "import json; print(json.load(open('$out/plan.json'))['seeds'])")}
  arms=(ladder control)
  every=40000
else
  seeds=${SEEDS:?part 2 needs SEEDS=S from part 1 (plan.json)}
  arms=(ebgan_ln)
  every=60000
fi
[ "$seeds" -ge 1 ] || { echo "no seed fits the budget: see $out/plan.json"; exit 1; }
# The Ladder and control programs are the same (the learning rate is state): the second
# arm's compile is a cache hit.
export JAX_COMPILATION_CACHE_DIR="$workdir/jax_cache"
todo=${#arms[@]}
for arm in "${arms[@]}"; do
  left=$(( (budget - ($(date +%s) - t0) - 20) / todo ))  # this arm's share of what is left
  todo=$(( todo - 1 ))
  echo "== $arm: $seeds seeds x 3 label counts as one population, at most $left s"
  python3 -m experiments.semi_supervised --config=configs/mnist_ssl.py:$arm --seeds="$seeds" \
    --population_size=$(( 3 * seeds )) --max_seconds="$left" "${common[@]}" \
    --config.checkpoint_every_steps=$every 2>&1 | quiet > "$out/$arm.log"
  tail -n 3 "$out/$arm.log"
done
# What comes back: the table, every run's results and metrics (no checkpoints).
cp "$workdir"/table2.md "$workdir"/table2.json "$out/" 2>/dev/null
( cd "$workdir" && find . -path '*/seed*' \( -name results.json -o -name metrics.jsonl \
    -o -name config.json \) -print0 | xargs -0 -r tar czf "$out/runs_part$part.tar.gz" )
cat "$out/table2.md" 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s"
