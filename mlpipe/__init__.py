"""mlpipe: precompute predictions for a whole population and publish them into PostgreSQL."""

import os

# Chunk tasks run side by side with PostgreSQL backends on the same cores. OpenMP's default lets idle
# predictor threads spin at every barrier, burning the CPU the database needs; passive waiting scored
# 10-20% faster here. Read once, when the OpenMP runtime loads: so set before xgboost is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
