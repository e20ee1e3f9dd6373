"""Studies that combine the metric, the measures and training into results."""

from .demo import run_demo
from .measure import measure_network

__all__ = ["measure_network", "run_demo"]
