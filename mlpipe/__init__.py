"""mlpipe: precompute predictions for a whole population and publish them into PostgreSQL."""

__version__ = "0.1.0"
