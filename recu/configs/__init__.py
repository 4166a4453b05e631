"""ReCU experiment configs: one per published run (spec binary-recu-siman.md §1.5, §3) + digits."""
