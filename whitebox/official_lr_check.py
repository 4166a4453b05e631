"""The official class-wise stage in PyTorch on digits: does lr 0.1 diverge there too?

  python -m whitebox.official_lr_check --lr=0.1 --epochs=3 --batch=64
  python -m whitebox.official_lr_check --lr=0.1 --dense      # the same network without masks

A transcription, for comparison only, of zyxxmu/White-Box stage 1 on VGG-tiny:
``model/vgg_cifar.py: VGG_Class`` (conv + BN + ReLU, the class mask applied after every ReLU by
``ClassScale_Gaussian``, whose forward draws ``u ~ U[0, 1)`` per sample and class with 1 at the
true class and scales channel c by ``(u M)[c]``, and whose hand-written backward returns
``dx = g * (u M)`` and ``dM = u^T sum_hw(g * x)``), ``_initialize_weights`` (Kaiming-normal
fan-out convs, ``N(0, 0.01)`` classifier), and ``cifar.py: train_class`` (cross-entropy plus
``sparse_lambda * ||sum_k M||_2`` for every mask; ``optim.SGD(lr, momentum 0.9, weight_decay
5e-4)`` over every parameter, masks included). The data are the arrays ``common.data`` makes of
digits (1437 training images, nearest-upsampled to 32x32, train-set standardised; no
augmentation). Needs PyTorch (not a dependency of the package; only this check uses it).

Prints one line per epoch: mean cross-entropy, train top-1 and the first steps' cross-entropy.
``whitebox/README.md`` (section "Class-wise stage learning rate") lists what it printed.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from common import cli

VGG_TINY = (16, 16, 'M', 32, 32, 'M', 64, 64, 'M')


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    cli.fail(f'this check needs PyTorch (pip install torch); {e}')
  return torch


def gate_function(torch):
  """The autograd function of ``model/vgg_cifar.py: ClassScale_Gaussian``: ``apply(x [N, C, H, W],
  mask [K, C], u [N, K])`` (``u`` drawn by the caller, as ``Gaussian_select`` does) with the
  code's hand-written backward."""

  class ClassScale(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, mask, u):
      guide = u @ mask
      ctx.save_for_backward(x, guide, u)
      return x * guide[:, :, None, None]

    @staticmethod
    def backward(ctx, g):
      x, guide, u = ctx.saved_tensors
      grad_guide = (g * x).sum((2, 3))
      return g * guide[:, :, None, None], u.t() @ grad_guide, None

  return ClassScale


def draw_u(torch, labels, num_classes: int):
  """``Gaussian_select``: ``u [N, K]`` i.i.d. ``U[0, 1)`` (``torch.rand``), 1 at the true class."""
  u = torch.rand(labels.shape[0], num_classes)
  u[torch.arange(labels.shape[0]), labels] = 1.0
  return u


def build(torch, num_classes: int = 10, gated: bool = True):
  """``VGG_Class`` on the VGG-tiny config: ``forward(x, labels) -> (logits, masks)``."""
  nn = torch.nn
  fn = gate_function(torch)

  class VGGClass(nn.Module):

    def __init__(self):
      super().__init__()
      layers, cin, widths = [], 3, []
      for v in VGG_TINY:
        if v == 'M':
          layers.append(nn.MaxPool2d(2, 2))
        else:
          layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
          cin = v
          widths.append(v)
      self.features = nn.Sequential(*layers)
      self.mask = nn.ParameterList([nn.Parameter(torch.ones(num_classes, w)) for w in widths])
      self.classifier = nn.Linear(cin, num_classes)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
          nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
          nn.init.normal_(m.weight, 0, 0.01)
          nn.init.constant_(m.bias, 0)

    def forward(self, x, labels):
      j = 0
      for f in self.features:
        x = f(x)
        if gated and isinstance(f, nn.ReLU):
          x = fn.apply(x, self.mask[j], draw_u(torch, labels, num_classes))
          j += 1
      return self.classifier(x.mean((2, 3))), self.mask

  return VGGClass()


def run(lr: float, epochs: int, batch: int, lam: float = 0.01, gated: bool = True,
        seed: int = 0) -> List[Dict[str, float]]:
  """Stage 1 as ``cifar.py: train_class`` runs it; per epoch ``{'ce', 'top1', 'first_ce'}``."""
  torch = _torch()
  from common.data import digits  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  torch.set_num_threads(1)
  x, y, tr, _ = digits._arrays(0, digits.DEFAULT_TEST_SIZE, 'nearest')  # pylint: disable=protected-access
  xt = x[tr]
  xt = (xt - xt.mean((0, 1, 2))) / xt.std((0, 1, 2))
  images = torch.tensor(np.ascontiguousarray(xt.transpose(0, 3, 1, 2)))
  labels = torch.tensor(y[tr], dtype=torch.long)
  model = build(torch, gated=gated)
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(epochs):
    perm = rng.permutation(len(tr))
    ces, accs = [], []
    model.train()
    for b in range(len(perm) // batch):
      idx = torch.tensor(perm[b * batch:(b + 1) * batch])
      logits, masks = model(images[idx], labels[idx])
      ce = torch.nn.functional.cross_entropy(logits, labels[idx])
      loss = ce + sum(lam * torch.sum(m, 0).norm(2) for m in masks)
      opt.zero_grad()
      loss.backward()
      opt.step()
      ces.append(ce.item())
      accs.append((logits.argmax(1) == labels[idx]).float().mean().item())
    out.append({'ce': float(np.mean(ces)), 'top1': float(np.mean(accs)),
                'first_ce': [round(c, 2) for c in ces[:5]]})
  return out


def main(argv=None):
  ap = cli.ArgumentParser(prog='python -m whitebox.official_lr_check',
                          description=__doc__.split('\n')[0])
  ap.add_argument('--lr', type=float, default=0.1, help='constant lr, > 0')
  ap.add_argument('--epochs', type=int, default=3, help='>= 1')
  ap.add_argument('--batch', type=int, default=64, help='>= 1')
  ap.add_argument('--sparse_lambda', type=float, default=0.01, help='>= 0')
  ap.add_argument('--dense', action='store_true', help='no masks in the forward')
  ap.add_argument('--seed', type=int, default=0)
  fl = ap.parse_args(argv)
  if not fl.lr > 0:
    cli.fail(f'--lr must be > 0; got {fl.lr}')
  if fl.epochs < 1 or fl.batch < 1:
    cli.fail(f'--epochs and --batch must be >= 1; got {fl.epochs}, {fl.batch}')
  if fl.sparse_lambda < 0:
    cli.fail(f'--sparse_lambda must be >= 0; got {fl.sparse_lambda}')
  rows = run(fl.lr, fl.epochs, fl.batch, fl.sparse_lambda, not fl.dense, fl.seed)
  for e, r in enumerate(rows):
    print(f'official stage 1 (PyTorch) gated={not fl.dense} lr={fl.lr} batch={fl.batch} '
          f'lambda={fl.sparse_lambda} epoch {e}: ce {r["ce"]:.4f} train top-1 {r["top1"]:.4f} '
          f'first steps {r["first_ce"]}', flush=True)
  return rows


if __name__ == '__main__':
  main()
