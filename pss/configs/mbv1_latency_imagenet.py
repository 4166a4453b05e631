"""PSS-MBV1-C (local latency) on ImageNet.

  python -m pss.train --config=pss/configs/mbv1_latency_imagenet.py --workdir=runs/pss_mbv1_latency_imagenet

scripts/train/pss-mbv1-c.sh with the latency metric: bins of 1000 us over 10..31 ms as the
official CPU table; the table is measured on this machine first:
  python -m pss.latency_table --space=mbv1_imagenet --out=runs/latency/mbv1_imagenet.json
and the bin range must be set to what that table gives (--config.method.target_start/stop/step).
Published (official CPU table, another device): 32 ms 74.2 ... 11 ms 68.0 top-1.
"""
from pss.configs.recipes import imagenet_config


def get_config():
  return imagenet_config('slim_mobilenet_v1', metric='latency', target_start=10000, target_stop=31000,
                         target_step=1000, latency_table='runs/latency/mbv1_imagenet.json')
