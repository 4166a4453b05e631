"""FFSD: online knowledge distillation with feature fusion and self-distillation.

Li, Lin, Wang, Wu, Tian, Shao, Ji, "Distilling a Powerful Student Model via Online Knowledge
Distillation", IEEE TNNLS 2022 (arXiv 2103.14473); official code SJLeo/FFSD. m common students
learn from each other (DML) and are pushed apart (diversity loss); a fusion module fuses their
last feature maps; a student leader, the only network deployed, learns from the fusion module's
logits and fused features; self-distillation decoders turn deep features into shallow targets.

The functional API (NHWC feature maps, pure functions)::

    from ffsd import attention_map, normalized_mse, diversity_loss, diversity_shift, dml_losses
    from ffsd import lambda_warmup, total_loss, FusionModule, SelfDistillationDecoder
    nets = ffsd.networks.build(backbone, 'resnet32', (32, 32, 3), num_students=2, num_classes=100)
    out, new_stats = nets.train_outputs(params, batch_stats, images)
    loss, metrics = total_loss(out, labels, {'lam_div': ..., 'lam_fus': ..., 'lam_sd': ...})

``python -m ffsd.train`` trains it on ``common.train``; ``ffsd.quick`` is the digits experiment,
``python -m ffsd.bench`` times the vmapped step against the networks stepped one by one.
"""
from ffsd.ffsd import (decoder_losses, fusion_loss, leader_loss, student_losses,  # noqa: F401
                       total_loss)
from ffsd.losses import (attention_map, attention_sum, diversity_loss,  # noqa: F401
                         diversity_shift, diversity_target, dml_losses, lambda_warmup,
                         normalized_mse, reconstruction_loss)
from ffsd.modules import FusionModule, SelfDistillationDecoder, TransFusion  # noqa: F401
from ffsd import networks  # noqa: F401
