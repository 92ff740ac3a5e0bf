import os

# Tests never reach a hub: models and data come from the wheels and the demo generator.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import sys, os; sys.path.insert(0, os.path.dirname(__file__))
