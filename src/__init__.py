"""GAN training pipeline library: the stage scripts in ``stages/`` call into this package."""
from src import quiet as _quiet

_quiet.install()  # before anything imports TensorFlow: its start-up chatter stays out of the logs
