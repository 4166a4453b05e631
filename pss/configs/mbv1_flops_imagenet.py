"""PSS-MBV1-F on ImageNet.

  python -m pss.train --config=pss/configs/mbv1_flops_imagenet.py --workdir=runs/pss_mbv1_flops_imagenet

scripts/train/pss-mbv1-f.sh: FLOPs bins 120..560 MFLOPs (step 10). Published (README):
555M 74.2, 443M 73.6, 343M 72.7, 273M 72.1, 126M 68.1, 107M 67.9 top-1 (568.8M max net 74.09).
"""
from pss.configs.recipes import imagenet_config


def get_config():
  return imagenet_config('slim_mobilenet_v1', metric='flops', target_start=110, target_stop=570,
                         target_step=10, latency_table='')
