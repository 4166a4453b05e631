"""PSS-MBV2-F on ImageNet.

  python -m pss.train --config=pss/configs/mbv2_flops_imagenet.py --workdir=runs/pss_mbv2_flops_imagenet

scripts/train/pss-mbv2-f.sh: FLOPs bins 80..290 MFLOPs (step 10). Published (README):
301M 73.4, 277M 72.8, 241M 72.4, 203M 72.1, 163M 70.9, 134M 70.0, 84M 66.8, 69M 66.4 top-1.
"""
from pss.configs.recipes import imagenet_config


def get_config():
  return imagenet_config('slim_mobilenet_v2', metric='flops', target_start=70, target_stop=300,
                         target_step=10, latency_table='')
