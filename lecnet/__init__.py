"""LEC-Net: Learnable Expansion-and-Compression Network for few-shot class-incremental learning
(Yang et al., ICCV 2021), as the partial official code ICCV2021-LEC/LEC does it
(``models/LECNet.py``; the training loop is reconstructed, see ``lecnet/README.md``).

Functional API::

    from lecnet import beta_schedule, gate, compression_penalty, kd_loss, session_logits
    beta = beta_schedule(epoch)                    # 1 + max(e - 20, 0)
    alpha = gate(a_s, beta)                        # sigmoid(beta * mean_b a_s), [N]
    loss = ce + kd_loss(logits, old_logits) + 0.1 * compression_penalty(alpha, r=0.1)
    logits = session_logits(u, [a_1..a_s], [A_1..alpha_s], [W_c0..W_cs])   # [B, base + s way]

Protocols (``lecnet.protocol``), metrics (``lecnet.metrics``), the pre-allocated model
(``lecnet.model.LECNet``); training: ``python -m lecnet.train --config=lecnet/configs/<name>.py
--workdir=DIR``.
"""
from lecnet.lec import (ANNEAL_START, GAMMA, KD_TEMPERATURE, PENALTY_WEIGHT, R_BUDGET,
                        active_fraction, beta_schedule, compression_penalty, gate, kd_loss,
                        l2_normalize, session_features, session_logits)
from lecnet.metrics import block_counts, performance_drop, session_of_class, summarize
from lecnet.export import compact_branches, compact_logits

__all__ = ['ANNEAL_START', 'GAMMA', 'KD_TEMPERATURE', 'PENALTY_WEIGHT', 'R_BUDGET',
           'active_fraction', 'beta_schedule', 'block_counts', 'compact_branches',
           'compact_logits', 'compression_penalty', 'gate', 'kd_loss', 'l2_normalize',
           'performance_drop', 'session_features', 'session_logits', 'session_of_class',
           'summarize']
