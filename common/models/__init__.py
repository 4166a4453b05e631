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
``wrn`` (wrn_16_2, wrn_40_2 and the width-1 wrn_16_1, wrn_40_1), ``regnet`` (regnetx_600mf),
``densenet`` (densenet40), ``googlenet`` (the CIFAR GoogLeNet),
``slimmable`` (slim_mobilenet_v1[_tiny], slim_mobilenet_v2: masked supernets).
A paper package registers its own networks when it is imported (``import recu`` adds the
``recu_*`` binary networks, ``import siman`` the ``siman_*`` ones, both built from
``common.models.bnn_layers``); this package imports no paper package.
"""
from common.models.registry import (MODELS, Entry, canonical_widths, default_widths, get_model,
                                    layer_specs, register)
from common.models.specs import LayerSpec
from common.models.taps import Tap, tap_sites
# Importing the model modules registers them.
from common.models import mobilenet_v1, mobilenet_v2, resnet, resnet_cifar, vgg  # noqa: F401
from common.models import slimmable  # noqa: F401  (slim_mobilenet_v1[_tiny], slim_mobilenet_v2)
from common.models import regnet  # noqa: F401
from common.models import wrn  # noqa: F401
from common.models import densenet, googlenet  # noqa: F401  (FFSD's CIFAR DenseNet-40, GoogLeNet)

__all__ = ['MODELS', 'Entry', 'LayerSpec', 'Tap', 'canonical_widths', 'default_widths',
           'get_model', 'layer_specs', 'register', 'tap_sites']
