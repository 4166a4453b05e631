"""ReCU (Xu et al., ICCV 2021) as z-hXu/ReCU codes it; spec ``shared/papers/binary-recu-siman.md`` §1."""
