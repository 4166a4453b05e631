"""FDDA's class-conditional generator (zysxmu/FDDA ``main_DBNS_CBNS.py``: ``Generator_imagenet``,
the GDFQ generator with ``CategoricalConditionalBatchNorm2d`` from ``conditional_batchnorm.py``).

``z [B, latent] -> Linear -> [B, S/4, S/4, 128] -> CondBN(eps 1e-5) -> up x2 -> conv3x3 128 ->
CondBN(eps 0.8) -> LeakyReLU(0.2) -> up x2 -> conv3x3 64 -> CondBN(eps 0.8) -> LeakyReLU(0.2) ->
conv3x3 C -> tanh -> BN(C, no affine)``, NHWC. The two ``eps = 0.8`` are the code's quirk (0.8 is the
third positional argument of ``CategoricalConditionalBatchNorm2d(num_classes, features, eps)``,
meant as a momentum in GAN code); they are kept because they change what the generator produces.
The generator's BNs always normalise with the statistics of the current batch (the code keeps the
generator in ``train()`` mode and never evaluates it), so their running averages are never read:
:func:`generate` discards them. Initialisation: PyTorch's defaults (``U(+-1/sqrt(fan_in))``),
conditional scales 1 and shifts 0 (``_initialize``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.models import layers as L

GDFQ_EPS = 0.8


class ConditionalBatchNorm(nn.Module):
  """``CategoricalConditionalBatchNorm2d``: affine-free BN with batch statistics, then the
  per-class scale and shift ``gamma[y], beta[y]`` (embedding tables, init 1 and 0).

  ``x [B, H, W, C], y [B] int -> [B, H, W, C]``.
  """
  num_classes: int
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, y):
    c = x.shape[-1]
    h = nn.BatchNorm(use_running_average=False, use_bias=False, use_scale=False,
                     epsilon=self.epsilon, momentum=0.9, name='bn')(x)
    gamma = self.param('gamma', nn.initializers.ones, (self.num_classes, c))
    beta = self.param('beta', nn.initializers.zeros, (self.num_classes, c))
    return (h * jnp.take(gamma, y, axis=0)[:, None, None, :]
            + jnp.take(beta, y, axis=0)[:, None, None, :])


def _upsample2(x):
  """Nearest-neighbour x2 (``F.interpolate(scale_factor=2)``): ``[B, H, W, C] -> [B, 2H, 2W, C]``."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Generator(nn.Module):
  """``(z [B, latent_dim], y [B]) -> images [B, img_size, img_size, channels]``.

  Attributes:
    num_classes: K (rows of the conditional tables).
    img_size: S, a multiple of 4 (224 on ImageNet, 32 on digits).
    latent_dim: 100 in the code.
    channels: image channels.
    width: channels after the linear layer (128 in the code; the last hidden conv has width / 2).
    cond_eps: eps of the two inner conditional BNs (the code's 0.8).
  """
  num_classes: int
  img_size: int = 224
  latent_dim: int = 100
  channels: int = 3
  width: int = 128
  cond_eps: float = GDFQ_EPS

  @nn.compact
  def __call__(self, z, y):
    if self.img_size % 4:
      raise ValueError(f'generator img_size must be a multiple of 4; got {self.img_size}')
    s, w = self.img_size // 4, self.width
    h = L.dense(w * s * s, in_ch=self.latent_dim, name='l1')(z)
    h = h.reshape(z.shape[0], s, s, w)
    h = ConditionalBatchNorm(self.num_classes, 1e-5, name='cbn0')(h, y)
    h = _upsample2(h)
    h = L.conv(w, 3, in_ch=w, bias=True, name='conv1')(h)
    h = nn.leaky_relu(ConditionalBatchNorm(self.num_classes, self.cond_eps, name='cbn1')(h, y), 0.2)
    h = _upsample2(h)
    h = L.conv(w // 2, 3, in_ch=w, bias=True, name='conv2')(h)
    h = nn.leaky_relu(ConditionalBatchNorm(self.num_classes, self.cond_eps, name='cbn2')(h, y), 0.2)
    h = L.conv(self.channels, 3, in_ch=w // 2, bias=True, name='conv3')(h)
    h = jnp.tanh(h)
    return nn.BatchNorm(use_running_average=False, use_bias=False, use_scale=False, epsilon=1e-5,
                        momentum=0.9, name='bn_out')(h)


def init_generator(gen: Generator, rng) -> dict:
  """``{'params', 'batch_stats'}`` of ``gen`` (the batch statistics only give ``apply`` its shapes)."""
  z = jnp.zeros((2, gen.latent_dim), jnp.float32)
  y = jnp.zeros((2,), jnp.int32)
  v = gen.init(rng, z, y)
  return {'params': v['params'], 'batch_stats': v['batch_stats']}


def generate(gen: Generator, params, batch_stats, z, y):
  """``images [B, S, S, C]`` from ``z [B, latent_dim]`` and labels ``y [B]``, in training mode
  (batch statistics; the updated running averages are dropped, see the module docstring)."""
  out, _ = gen.apply({'params': params, 'batch_stats': batch_stats}, z, y,
                     mutable=['batch_stats'])
  return out


def sample_latent(rng, batch: int, latent_dim: int, num_classes: int):
  """``(z ~ N(0, I) [B, latent_dim], y ~ U{0..K-1} [B])``: batch A of the code's ``train``."""
  kz, ky = jax.random.split(rng)
  return (jax.random.normal(kz, (batch, latent_dim), jnp.float32),
          jax.random.randint(ky, (batch,), 0, num_classes))
