"""LEC-Net on CUB-200-2011 FSCIL (100 base classes + 10 sessions of 10-way 5-shot).

  python -m common.data.prepare --dataset=caltech_birds2011 --source=/path/to/CUB_200_2011
  python -m common.convert --checkpoint=resnet18-f37072fd.pth --model=resnet18 --out=r18.npz
  python -m lecnet.train --config=lecnet/configs/cub200.py --workdir=runs/lecnet_cub200 \\
      --config.method.index_list_dir=/path/to/CEC-CVPR2021/data/index_list/cub200 \\
      --config.method.backbone_checkpoint=r18.npz

``--config.method.cub_lists=lec`` with ``index_list_dir`` = ICCV2021-LEC/LEC
``data_list/CUB200/Index_list/Seed_3`` reads LEC's seeded random class orders (5 shots drawn per
class from the listed images). Published (LEC README, ResNet-18 ImageNet-pretrained): 70.86, 58.15,
54.83, 49.34, 45.85, 40.55, 39.70, 34.59, 36.58, 33.56, 31.96 (sessions 0-10). Base session: CEC's
CUB recipe (SGD Nesterov lr 0.1, wd 5e-4, steps at 30 / 40 / 60 / 80 of 100 epochs); LEC's
transforms (train Resize 256 + RandomCrop 224 + flip; test Resize (224, 224)). Sessions: 1000
full-batch LEC epochs, Adam lr 5e-3, N = 512.
"""
from lecnet.configs.recipes import lecnet_config


def get_config():
  c = lecnet_config(protocol='caltech_birds2011', dataset='caltech_birds2011', model='resnet18',
                    base_classes=100, way=10, shot=5, sessions=10, nodes=512, base_epochs=100,
                    milestones=(30, 40, 60, 80))
  c.dataset.options = {'crop': 'plain', 'train_resize': (256, 256), 'eval_resize': (224, 224)}
  return c
