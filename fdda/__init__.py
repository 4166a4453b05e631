"""FDDA: post-training quantization with fine-grained data distribution alignment (Zhong et al.,
ECCV 2022; official code zysxmu/FDDA).

Functional API (pure, jit-able):

* per-class BN centres and the alignment losses (``fdda.alignment``): :func:`class_centres`,
  :func:`deep_start`, :func:`bns_loss`, :func:`centralized_loss`, :func:`distorted_loss`,
  :func:`noise_target_loss`, :func:`pick_class`, :func:`class_separation`;
* the class-conditional generator (``fdda.generator``): :class:`Generator`,
  :class:`ConditionalBatchNorm`, :func:`generate`;
* the student loss (``fdda.distill``): :func:`student_loss` (CE + alpha T^2 KL);
* the quantizers and bit rules live in ``common.quantize`` (``quantize_params``, ``weight_bits``,
  ``activation_bits``, ``activation_quant_tap``, ``bits_summary``).

``python -m fdda.train`` runs the procedure (``fdda/train.py``), ``fdda.quick`` the digits
experiment, ``python -m fdda.bench`` the generation and quantized-step timings.
"""
from fdda.alignment import (bn_names, bns_loss, centralized_loss, class_centres,
                            class_separation, deep_start, distorted_loss, noise_target_loss,
                            pick_class, running_stats)
from fdda.distill import student_loss
from fdda.generator import ConditionalBatchNorm, Generator, generate, init_generator, sample_latent

__all__ = ['ConditionalBatchNorm', 'Generator', 'bn_names', 'bns_loss', 'centralized_loss',
           'class_centres', 'class_separation', 'deep_start', 'distorted_loss', 'generate',
           'init_generator', 'noise_target_loss', 'pick_class', 'running_stats', 'sample_latent',
           'student_loss']
