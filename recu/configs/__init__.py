"""ReCU experiment configs: one per published run of the z-hXu/ReCU README + digits."""
