"""The model zoo: plain linen CNNs configured by per-layer width lists.

    model = get_model('resnet56', num_classes=10)                 # paper-default widths
    model = get_model('vgg16', 10, widths=[32, 32, 76, ...])      # DCFF compact VGG-16
    specs = layer_specs('resnet56', input_hw=(32, 32))            # analytic, no tracing

    sites = tap_sites(model, (1, 32, 32, 3))                      # [(site name, shape)]

Every model: ``__call__(x [B, H, W, C] float32, train: bool) -> logits [B, num_classes]``; BN
momentum 0.9 (PyTorch 0.1), eps 1e-5, collection ``batch_stats``; the pooled features are sown as
``intermediates/features``. The zoo's own families also take ``tap=`` (a function called at named
activation sites: ``common.models.taps``) and an ``act`` option (the activation callable).
Width formats are documented in each model module; widths are plain JSON-serialisable ints /
lists / dicts. Initialisers: see ``common.models.layers``.

Registered families: ``resnet_cifar`` (resnet8..110, resnet32_wide), ``vgg`` (vgg11/13/16/19,
vgg_tiny), ``resnet`` (resnet18/34/50), ``mobilenet_v1`` (+ _tiny), ``mobilenet_v2`` (+ _cifar),
and the BNN variants of ``bnn_recu`` / ``bnn_siman`` (owned by the ReCU / SiMaN packages).
"""
import importlib
import importlib.util

from common.models.registry import (MODELS, Entry, canonical_widths, default_widths, get_model,
                                    layer_specs, register)
from common.models.specs import LayerSpec
from common.models.taps import Tap, tap_sites
# Importing the model modules registers them.
from common.models import mobilenet_v1, mobilenet_v2, resnet, resnet_cifar, vgg  # noqa: F401

# The BNN zoo modules belong to the ReCU / SiMaN packages; they register themselves when present.
# find_spec (not try/except ImportError) so that a real error inside them still surfaces.
for _bnn in ('bnn_recu', 'bnn_siman'):
  if importlib.util.find_spec(f'common.models.{_bnn}') is not None:
    importlib.import_module(f'common.models.{_bnn}')

__all__ = ['MODELS', 'Entry', 'LayerSpec', 'Tap', 'canonical_widths', 'default_widths',
           'get_model', 'layer_specs', 'register', 'tap_sites']
