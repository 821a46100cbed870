"""Test settings: tiny models run fastest on one thread, and plots need no display."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
