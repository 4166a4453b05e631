"""Child of test_multihost: the toy engine run as process ``pid`` of ``nproc`` on localhost."""
import json
import os
import sys


def main(pid: int, nproc: int, port: int, workdir: str):
  from common import train
  from tests.common import engine_fixtures as ef
  train.load_dataset = lambda config, split: ef.ToyData(64 if split == 'train' else 30,
                                                        0 if split == 'train' else 1)
  c = ef.toy_config(3)
  if nproc > 1:
    c.distributed.coordinator_address = f'127.0.0.1:{port}'
    c.distributed.num_processes = nproc
    c.distributed.process_id = pid
  train.run(c, workdir, ef.ToyMethod(c))
  if pid == 0:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      print(json.dumps([json.loads(l) for l in f]))


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
