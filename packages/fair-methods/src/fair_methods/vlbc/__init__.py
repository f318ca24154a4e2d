"""VLBC (D'Inca et al., WACV 2024) as `fair augment` stages: the DiffAE generator, the ContraCLIP
latent-path editor and the classifier labeller (the pipeline itself is :mod:`fair_core.augment`)."""
