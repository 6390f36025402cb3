"""The grid search runner of Sec. 4.1: populations of runs, scored, one table row per run.

`run_grid(points, workdir, ...)` takes the grid points (configs from a sweep, e.g.
`configs/mnist_grid.py`), groups the runs whose parameter shapes match into populations
(`ebgan_jax.population`: one jitted program, vmapped on accelerators and unrolled on a CPU;
members share the input batches),
trains each population for its budget, scores every member with the offline classifier
(`ebgan_jax.evaluate`) and appends one row per run to the results table. With
`config.grid.bucketing` on (the default on a GPU/TPU), runs that differ only in widths,
dropout, optimizers or lr share padded population programs (`buckets`, `ebgan_jax.padding`):
fewer programs to compile, bigger populations, the same rows.

The results table (`table`). Each shard appends JSON lines to its own file
`results/<variant>-shard<i>of<n>.jsonl`. On a local workdir one `write` of whole lines under
an exclusive `fcntl` lock, followed by `fsync`: two processes on one shared workdir (two
shards, or the same shard started twice) never interleave or truncate each other's rows, and
a process killed mid-write leaves at most one torn last line, which readers skip. On a remote
workdir (`gs://...`, through `etils.epath`) there is no lock: each shard's file is rewritten
whole, so each shard must run in exactly one process at a time. A population's rows are
written only after its runs' samples are saved, so a row means a finished run.
`merge(workdir)` combines every shard file into `results.jsonl` and `results.csv` (one row per
run id).

Resuming. A restarted grid reads every table in `results/` and skips the runs already there;
populations are formed from the unfinished runs only. A population killed mid-training is
retrained from its first step (runs are short; nothing finished is lost).

Sharding. The populations (not the runs, so that a population's members stay together) are
dealt round-robin to `num_shards` shards in the sweep's order, which every machine computes
alike; `--shard_index` comes from the flag, or `SLURM_ARRAY_TASK_ID` (minus
`SLURM_ARRAY_TASK_MIN`), or Kubernetes' `JOB_COMPLETION_INDEX`.

NaN. A member whose loss or samples become non-finite is recorded with `nan: true`, the step
it first failed at, and NaN scores; the grid goes on. `jax.vmap` keeps members independent:
a NaN in one member's params cannot reach another's (their arithmetic never mixes).

Modules, one job each: `runs` (run identity and shards), `buckets` (which runs share a
padded population program, and the padding waste), `table` (the results table, its lock,
the sample files, the merge), `programs` (compiling, training and generating one population;
the programs shared between populations), `runner` (`run_grid`, the compile threads, the
compilation cache). Everything
public is re-exported here: `from ebgan_jax import grid; grid.run_grid(...)`.
"""

from ebgan_jax.grid import buckets
from ebgan_jax.grid.programs import (FINAL_WINDOW, Program, ProgramCache, batch_chunks,
                                     compile_population, data_config, data_key,
                                     generate_population, steps_per_call, train_population)
from ebgan_jax.grid.runner import (default_compile_workers, enable_compilation_cache, run_grid,
                                   set_xla_gpu_autotune_level)
from ebgan_jax.grid.runs import (family, knobs, run_id, shard_from_env, shard_populations,
                                 table_name)
from ebgan_jax.grid.table import (MERGED_CSV, MERGED_JSONL, RESULTS_DIR, SAMPLES_DIR,
                                  append_row, append_rows, is_remote, merge, read_results,
                                  read_table, save_samples, shard_table)
