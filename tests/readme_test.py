"""Every command the READMEs show parses: its module, its flags and its config overrides.

The ```bash blocks of README.md, RESULTS.md and experiments/README*.md are split into commands
(backslash continuations joined, comments and environment assignments dropped). Each
`python -m MODULE ...` command runs, in one subprocess, up to its flag parsing: the module's
`absl.app.run` is replaced by a parse of the command's flags (which loads `--config=FILE:ARG`
and applies every `--config.FIELD=VALUE`), so an unknown flag, a renamed one or a config field
that does not exist fails here, and nothing trains. `make` targets must exist in the
Makefile. Other commands (tensorboard, pip, gsutil) are left alone.
"""

import json
import pathlib
import re
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
READMES = [REPO / 'README.md', REPO / 'RESULTS.md',
           *sorted((REPO / 'experiments').glob('README*.md'))]

CHECKER = r'''
import json, runpy, sys, warnings
warnings.filterwarnings('ignore', category=RuntimeWarning, module='runpy')
sys.path.insert(0, '')
from absl import app, flags


class Parsed(Exception):
  pass


def check(module, args):
  before = set(flags.FLAGS)
  real_run = app.run

  def parse_only(main, argv=None, **kwargs):
    flags.FLAGS(sys.argv)
    raise Parsed

  app.run = parse_only
  sys.argv = [module, *args]
  try:
    runpy.run_module(module, run_name='__main__', alter_sys=True)
    return f'{module} did not reach absl.app.run'
  except Parsed:
    return None
  except SystemExit as e:
    return f'exit {e.code}'
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {str(e)[:300]}'
  finally:
    app.run = real_run
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()


print(json.dumps([check(module, args) for module, args in json.loads(sys.argv[1])]))
'''


def bash_blocks(text: str) -> list[str]:
  return re.findall(r'```bash\n(.*?)```', text, flags=re.S)


def commands(block: str) -> list[list[str]]:
  """The block's commands as argv lists (continuations joined, comments dropped; in a
  `for VAR in A B ...; do` loop, $VAR is A)."""
  out, loop_values = [], {}
  for line in block.replace('\\\n', ' ').splitlines():
    line = line.split(' #', 1)[0].strip()
    if not line or line.startswith('#') or line == 'done':
      continue
    loop = re.match(r'^for (\w+) in (\S+).*?; do\s*(.*)$', line)
    if loop:
      loop_values[loop.group(1)] = loop.group(2)
      line = loop.group(3)
      if not line:
        continue
    for name, value in loop_values.items():
      line = line.replace(f'${{{name}}}', value).replace(f'${name}', value)
    argv = shlex.split(line)
    while argv and re.match(r'^[A-Z_][A-Z0-9_]*=', argv[0]):  # VAR=value prefixes
      argv = argv[1:]
    if argv:
      out.append(argv)
  return out


def python_module_commands() -> tuple[list[tuple[str, list[str]]], list[str], int]:
  """(module commands, make targets, other commands seen)."""
  modules, targets, others = [], [], 0
  for readme in READMES:
    for block in bash_blocks(readme.read_text()):
      for argv in commands(block):
        if argv[0].endswith(('python', 'python3')) and len(argv) > 2 and argv[1] == '-m':
          modules.append((argv[2], argv[3:]))
        elif argv[0] == 'make':
          targets.extend(a for a in argv[1:] if '=' not in a)
        else:
          others += 1
  return modules, targets, others


def test_readme_commands_are_found():
  modules, targets, _ = python_module_commands()
  assert {'demo', 'test'} <= set(targets)
  assert {'ebgan_jax.main', 'ebgan_jax.sample', 'ebgan_jax.evaluate',
          'experiments.grid_search', 'experiments.semi_supervised',
          'experiments.figures'} <= {m for m, _ in modules}


def test_make_targets_exist():
  _, targets, _ = python_module_commands()
  makefile = (REPO / 'Makefile').read_text()
  for target in targets:
    assert re.search(rf'^{re.escape(target)}:', makefile, flags=re.M), target


def test_every_readme_command_parses():
  modules, _, _ = python_module_commands()
  result = subprocess.run([sys.executable, '-c', CHECKER, json.dumps(modules)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={'PYTHONPATH': str(REPO), 'TF_CPP_MIN_LOG_LEVEL': '2',
                               'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.strip().splitlines()[-1])
  failed = [f'python -m {m} {" ".join(a)}\n    -> {e}' for (m, a), e in zip(modules, errors) if e]
  assert not failed, '\n'.join(failed)
