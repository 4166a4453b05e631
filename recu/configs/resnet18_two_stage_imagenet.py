"""ReCU two-stage (ReActNet-like) ResNet-18, stage 2, on ImageNet (imagenet_two-stage/run.sh;
README 66.4% top-1 vs ReActNet 65.9%).

  python -m recu.train --config=recu/configs/resnet18_two_stage_imagenet.py \
      --workdir=runs/recu_2s_r18 --config.method.teacher_checkpoint=runs/resnet34_teacher \
      [--config.init_checkpoint=runs/stage1]

256 epochs, batch 512, Adam 1e-3, cosine + 5-epoch warm-up (run.sh passes --lr_type twice; the
last, cos, wins), no weight decay, loss = KD from a ResNet-34 teacher only (no label CE).
``teacher_checkpoint`` is a finished ``common.train`` workdir of ``resnet34`` (e.g. torchvision
weights converted into one); the repo has no stage-1 recipe, so ``init_checkpoint`` (loaded
strict=False) is optional.
"""
from recu.configs.recipes import recu_config


def get_config():
  c = recu_config(model='recu_resnet18_two_stage', dataset='imagenet2012', num_epochs=256,
                  batch_size=512, eval_batch_size=256, lr=1e-3, weight_decay=0.0, decay_rule='all',
                  optimizer='adam')
  c.method.teacher_checkpoint = ''
  c.method.teacher_model = 'resnet34'
  return c
