"""A tiny dataset and model that exercise the engine in seconds (no data set or zoo needed)."""
import flax.linen as nn
import numpy as np

from common import train


class ToyData:
  """Linearly separable 8x8x3 images, with the ``common.data`` Dataset interface."""

  def __init__(self, n: int, seed: int):
    r = np.random.RandomState(seed)
    self.x = r.randn(n, 8, 8, 3).astype(np.float32)
    self.y = (self.x[:, :4].mean((1, 2, 3)) > 0).astype(np.int32)
    self.num_examples, self.num_classes, self.image_shape, self.name = n, 2, (8, 8, 3), 'toy'

  def steps_per_epoch(self, bs, drop_remainder=True):
    return self.num_examples // bs if drop_remainder else -(-self.num_examples // bs)

  def batches(self, bs, *, epoch, train, drop_remainder, process_index=0, process_count=1):
    idx = (np.random.RandomState(1000 + epoch).permutation(self.num_examples) if train
           else np.arange(self.num_examples))
    n = (len(idx) // bs) * bs if drop_remainder else len(idx)
    per = bs // process_count   # each host takes its slice of every global batch
    for i in range(0, n, bs):
      j = idx[i:i + bs][process_index * per:(process_index + 1) * per]
      yield {'image': self.x[j], 'label': self.y[j]}


class ToyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), name='conv1')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn1')(x)
    return nn.Dense(2, name='fc')(nn.relu(x).mean((1, 2)))


class ToyMethod(train.Method):
  name = 'toy'

  def build_model(self):
    return ToyNet()

  def flops_params(self, state):
    return None, None


def use_toy_data(monkeypatch):
  monkeypatch.setattr(train, 'load_dataset',
                      lambda config, split: ToyData(64 if split == 'train' else 30,
                                                    0 if split == 'train' else 1))


def toy_config(epochs=4):
  from common.configs import base
  c = base.get_config()
  c.num_epochs = epochs
  c.dataset.batch_size = 16
  c.optimizer.learning_rate = 0.05
  c.progress_bar = False
  return c
