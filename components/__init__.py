"""KFP components: thin wrappers, one per step, over sidreasoner library calls."""
