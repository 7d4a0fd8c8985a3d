"""fewstep-bench: the shared machinery (data, nets, training, sampling, metrics, report)."""

__version__ = "0.1.0"
