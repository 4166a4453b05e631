"""PSS-MBV2-C (local latency) on ImageNet.

  python -m pss.train --config=pss/configs/mbv2_latency_imagenet.py --workdir=runs/pss_mbv2_latency_imagenet

scripts/train/pss-mbv2-c.sh with the latency metric: bins of 1000 us over 12..28 ms as the
official CPU table; the table is measured on this machine first:
  python -m pss.latency_table --space=mbv2_imagenet --out=runs/latency/mbv2_imagenet.json
and the bin range must be set to what that table gives (--config.method.target_start/stop/step).
Published (official CPU table, another device): 42 ms 73.3 ... 16 ms 66.7 top-1.
"""
from pss.configs.recipes import imagenet_config


def get_config():
  return imagenet_config('slim_mobilenet_v2', metric='latency', target_start=12000, target_stop=28000,
                         target_step=1000, latency_table='runs/latency/mbv2_imagenet.json')
