"""`experiments/benchmark.py` runs end to end and reports what BENCHMARKS.md quotes.

Not a timed test: the speeds of a one-call run at batch 8 mean nothing; the test checks
that every table the benchmark prints is filled, with counts that can be worked out by hand.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from tests import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCHES = (8, 16)
# Fig. 4(c)'s EBGAN-PT (nLayerG = 5, nLayerD = 2) at small widths: the FLOPs are a formula in
# them, and the small programs compile and run in a fraction of the full-width time.
SIZE_G, SIZE_D = 96, 64


@pytest.fixture(scope='module')
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp('benchmark') / 'fc.json'
  env = subprocess_env.subprocess_env(devices=1)
  cmd = [sys.executable, '-m', 'experiments.benchmark', '--configs=ebgan_pt',
         '--batch_sizes=8,16', '--steps_per_call=1,3', '--seconds=0', '--rounds=1',
         '--min_steps=1', '--warmup_steps=1', '--matmul_size=128', '--population_sizes=2',
         '--population_steps_per_call=2', f'--json={out}',
         f'--overrides=model.size_g={SIZE_G},model.size_d={SIZE_D}']
  result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(out.read_text()), result.stdout


def test_step_rows_count_each_steps_flops_by_hand(report):
  data, stdout = report
  rows = {(r['batch_size'], r['steps_per_call']): r for r in data['results']}
  assert sorted(rows) == [(8, 1), (8, 3), (16, 1), (16, 3)]
  for row in rows.values():
    assert row['images_per_s'] > 0 and row['compile_s'] > 0
  for b in BATCHES:  # FLOPs per step, not per call.
    assert rows[b, 1]['flops_per_step'] == rows[b, 3]['flops_per_step']
  # Dense multiply-adds per image of Fig. 4(c)'s layout with widths sG, sD: G
  # (100-sG-sG-sG-sG-1024) has sum(in*out) = G = 100 sG + 3 sG^2 + 1024 sG; D (1024-sD-1024)
  # D = 2048 sD. One step: G forward (2G); D's update on real and fake (forward 2D, backward
  # 4D, on 2 batches, less the input gradient of D's first layer, 2*1024*sD per batch); G's
  # update (D forward and input gradient, 4D; G backward 4G, less its first layer's input
  # gradient, under 1%): 6G + 16D - 4*1024*sD FLOPs per image, plus a little elementwise work
  # per image (measured: +0.3% at the paper's widths 800/1024, +1.5% at 96/64).
  g = 100 * SIZE_G + 3 * SIZE_G**2 + 1024 * SIZE_G
  d = 2048 * SIZE_D
  per_image = 6 * g + 16 * d - 4 * 1024 * SIZE_D
  slope = (rows[16, 1]['flops_per_step'] - rows[8, 1]['flops_per_step']) / 8
  assert per_image <= slope <= 1.05 * per_image, slope / per_image
  # What does not grow with the batch: the two Adam updates, ~15 FLOPs per parameter.
  params = g + d
  per_param = (rows[8, 1]['flops_per_step'] - 8 * slope) / params
  assert 5 <= per_param <= 25, per_param
  assert data['matmul_gflops'] > 0 and data['peak_memory_mib'] > 0 and data['memory_gbps'] > 0
  assert '| ebgan_pt | 16 | 3 |' in stdout


def test_population_rows_name_their_baseline_and_strategy(report):
  data, stdout = report
  baseline, pop = data['populations']
  assert baseline['baseline'] and baseline['population'] == 1
  assert baseline['strategy'] == 'unroll'  # The single run's own step.
  assert pop['population'] == 2 and pop['strategy'] == 'unroll'  # 'auto' on a CPU.
  assert pop['steps_per_call'] == 2
  assert pop['flops_per_step'] == 2 * baseline['flops_per_step']
  # Rates are medians of the timed rounds; the ratio is taken between those medians.
  assert len(pop['rounds_member_images_per_s']) == 1 == len(pop['rounds_vs_single_run'])
  assert pop['member_images_per_s'] == pop['rounds_member_images_per_s'][0] > 0
  assert pop['vs_single_run'] == pytest.approx(
      pop['member_images_per_s'] / baseline['member_images_per_s'])
  assert 'one run alone, scanned the same way' in stdout
