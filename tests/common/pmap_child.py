"""Child process of test_pmap: runs the toy engine on however many devices XLA_FLAGS forces."""
import json
import sys

import jax

from common import train
from tests.common import engine_fixtures as ef


def main(workdir):
  train.load_dataset = lambda config, split: ef.ToyData(64 if split == 'train' else 30,
                                                        0 if split == 'train' else 1)
  c = ef.toy_config(3)
  res = train.run(c, workdir, ef.ToyMethod(c))
  with open(f'{workdir}/metrics.jsonl') as f:
    rows = [json.loads(l) for l in f]
  print(json.dumps({'devices': jax.local_device_count(), 'rows': rows, 'res': res}))


if __name__ == '__main__':
  main(sys.argv[1])
