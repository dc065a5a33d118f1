"""The search: strategies (three_stage, darts in strategies.py; the baselines gdas, random_ws,
reinforce in modules of their own), the loop that drives them, and the hypergradient math."""
# Importing the baselines registers them in strategies.STRATEGIES under their --search_strategy names.
from capnas_tf.search import gdas, random_ws, reinforce  # noqa: F401
