"""The full-precision model FDDA quantizes, trained by ``common.train`` on a slice of the training
split, so that the rest of it is a held-out set (the quick experiment's learning-rate sweep reads
it, never the test split).

  python -m fdda.teacher --config=fdda/configs/digits_teacher.py --workdir=runs/fdda_teacher

``config.method.train_split`` ('train' = all of it) is the slice trained on; everything else is
``common.train``'s dense supervised training.
"""
from __future__ import annotations

from common import train


class Teacher(train.Method):
  """Dense training on ``config.method.train_split``; evaluation on the test split."""

  name = 'dense'

  def datasets(self):
    split = str(self.config.method.get('train_split', 'train'))
    return {'train': train.load_dataset(self.config, split),
            'test': train.load_dataset(self.config, 'test')}


main = train.cli(Teacher, default_config='fdda/configs/digits_teacher.py')

if __name__ == '__main__':
  main()
