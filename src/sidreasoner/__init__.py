"""SIDReasoner as a pipeline: the plain library behind every KFP step (never imports kfp)."""

__version__ = "0.1.0"
