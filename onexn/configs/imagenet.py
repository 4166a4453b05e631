"""1xN fine-tuning on ImageNet, the official setting; every published cell is one argument string
(the cells, their strings and expected top-1 are tabled in ``onexn/README.md``):

  python -m onexn.train --config=onexn/configs/imagenet.py:mobilenet_v2,n=4,p=0.5,rearrange=1 \
      --workdir=runs/onexn_mbv2_1x4 --config.init_checkpoint=PRETRAINED

Argument keys: the model (first, positional), ``pattern`` (block | weight | filter |
random_block), ``n`` (block size N), ``p`` (per-layer rate), ``rearrange`` (0/1),
``straddle`` (0/1, the official flattened grouping for C_out % N != 0),
``prune_classifier`` (0/1, the released ResNet-50 quirk). ``PRETRAINED`` is a finished
``common.train`` workdir of the dense model or a converted-weights file (``.npz``/``.msgpack``,
see ``onexn/README.md``).

Official hyperparameters (``utils/options.py`` defaults, README command passes arch, N, p, batch):
180 epochs, batch 256, SGD momentum 0.9 (no Nesterov), lr 0.01, per-epoch cosine
``0.5 lr (1 + cos(pi (e - 5) / (E - 5)))`` with a 5-epoch linear warm-up per iteration, weight
decay 4e-5 on every parameter (BN included), plain CE (label smoothing 0).
"""
import ml_collections

from common.configs import base

MODELS = ('mobilenet_v1', 'mobilenet_v2', 'resnet50')


def make(model: str = 'mobilenet_v2', *, pattern: str = 'block', n: int = 4, p: float = 0.5,
         rearrange: bool = False, straddle_blocks: bool = False,
         prune_classifier: bool = False) -> ml_collections.ConfigDict:
  """The experiment config of one cell (model, pattern, N, p, rearrangement)."""
  if model not in MODELS:
    raise ValueError(f'unknown model {model!r}; allowed: {list(MODELS)}')
  c = base.get_config()
  c.num_epochs = 180
  c.label_smoothing = 0.0
  c.init_checkpoint = ''          # required: the pretrained dense model (1xN never trains from scratch)
  c.dataset.name = 'imagenet2012'
  c.dataset.batch_size = 256
  c.dataset.eval_batch_size = 256
  # The README command uses the torchvision pipeline: RandomResizedCrop(224), area [0.08, 1]; the
  # optional --use_dali path uses [0.08, 1.25] (--config.dataset.options.crop_scale='(0.08,1.25)').
  c.dataset.options.crop_scale = (0.08, 1.0)
  c.model.name = model
  c.model.num_classes = 1000
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 4e-5
  c.schedule.name = 'cosine'
  c.schedule.cosine_shift = 5
  c.schedule.warmup = 'per_step'
  c.schedule.warmup_epochs = 5
  c.method = method_config(pattern=pattern, n=n, p=p, rearrange=rearrange,
                           straddle_blocks=straddle_blocks, prune_classifier=prune_classifier)
  return c


def method_config(*, pattern='block', n=4, p=0.5, rearrange=False, straddle_blocks=False,
                  prune_classifier=False) -> ml_collections.ConfigDict:
  """``config.method`` of ``onexn.train`` (field meanings in ``onexn/README.md``)."""
  m = ml_collections.ConfigDict()
  m.pattern = pattern                 # block | weight | filter | random_block (official conv types)
  m.block_size_n = int(n)             # N of the 1xN block
  m.sparsity = float(p)               # per-layer rate p (classifier 0)
  m.rearrange = bool(rearrange)       # L1 filter rearrangement (official --rearrange)
  m.straddle_blocks = bool(straddle_blocks)
  m.prune_classifier = bool(prune_classifier)
  m.random_with_replacement = True    # BlockRandomConv samples indices with replacement
  m.freeze_masked_biases = True       # get_mask sets bias.requires_grad = False
  m.export = True                     # export the sparse model and measure its CPU latency
  m.latency_batch = 1
  m.latency_repeats = 20
  return m


def _parse_bool(v: str) -> bool:
  if v.lower() in ('1', 'true', 'yes'):
    return True
  if v.lower() in ('0', 'false', 'no'):
    return False
  raise ValueError(f'expected 0/1 or true/false; got {v!r}')


def get_config(arg: str = 'mobilenet_v2'):
  """``arg`` = ``model[,key=value...]``; keys: pattern, n, p, rearrange, straddle, prune_classifier."""
  parts = [x.strip() for x in (arg or 'mobilenet_v2').split(',') if x.strip()]
  model, kw = parts[0], {}
  conv = {'pattern': str, 'n': int, 'p': float, 'rearrange': _parse_bool,
          'straddle': _parse_bool, 'prune_classifier': _parse_bool}
  for item in parts[1:]:
    if '=' not in item:
      raise ValueError(f'config argument {item!r} is not key=value; keys: {sorted(conv)}')
    k, v = item.split('=', 1)
    if k not in conv:
      raise ValueError(f'unknown config key {k!r}; allowed: {sorted(conv)}')
    kw['straddle_blocks' if k == 'straddle' else k] = conv[k](v)
  return make(model, **kw)
