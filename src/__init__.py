"""GAN training pipeline library: the stage scripts in ``stages/`` call into this package."""
